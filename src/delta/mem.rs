//! An in-memory [`FileTree`] with POSIX crash semantics, for the
//! deterministic simulator and for tests.
//!
//! What it does: keeps inodes (files and directories), each with its current
//! state and its durable state (as of its last sync) and the list of mutations
//! made since. [`MemTree::crash`] replaces every inode's state by its durable
//! state plus a random, seeded, in-order subset of its unsynced mutations (the
//! last kept write possibly torn): unsynced file data, unsynced modes and
//! unsynced directory entries may each be lost independently, which is what
//! POSIX allows. A rename is one event for the crash (kept or lost whole), as
//! journaling filesystems guarantee. An inode with more than
//! `UNSYNCED_MUTATIONS_MAX` unsynced mutations writes the older half back
//! (they become durable, in order), as a kernel would, so a file never
//! synced does not keep a whole run's writes in memory. Change tracking records every mutated
//! path under the watched root, like inotify would.
//!
//! Fault injection: [`MemTree::crash_after_ops`] makes the n-th mutation (or
//! sync) from now fail with [`TreeError::Crashed`], and every operation after
//! it, until [`MemTree::crash`] is called.
//!
//! What it does not do: threads, clocks or global randomness (the simulator
//! drives it from one thread; all randomness comes from the seed); symlinks,
//! hard links or special files (the engine refuses them anyway).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::tree::{
    check_rel_path, is_under, join, parent, Changes, FileTree, Kind, Meta, TreeError,
};

type Ino = u64;
const ROOT: Ino = 0;
/// Unsynced mutations one inode keeps; past it, the older half is written
/// back (becomes durable), as a kernel writes dirty pages back on its own.
/// Files never synced (the working copy, a journal between checkpoints)
/// otherwise kept every write of a long run in memory: a replica
/// simulation of 20,000 seeds peaked at 11.6 GB.
const UNSYNCED_MUTATIONS_MAX: usize = 512;
/// Paths the lookup cache keeps, at most (it starts over when full).
const PATH_CACHE_MAX: usize = 1 << 16;

/// Makes the older half of `inode`'s unsynced mutations durable, in order,
/// stopping before half of a rename (a rename is kept or lost whole, with
/// its other half in another inode).
fn write_back_oldest(inode: &mut Inode) {
    let half = inode.unsynced.len() / 2;
    let upto = inode.unsynced[..half]
        .iter()
        .position(|m| matches!(m, Mutation::Entry { group: Some(_), .. }))
        .unwrap_or(half);
    for mutation in inode.unsynced.drain(..upto) {
        apply_mutation(&mut inode.durable, &mutation);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    mode: u32,
    data: Vec<u8>,
    entries: BTreeMap<String, Ino>,
}

#[derive(Clone, Debug)]
enum Mutation {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    Mode(u32),
    /// Sets (Some) or removes (None) a directory entry; `group` ties the two
    /// halves of a rename so a crash keeps or loses both.
    Entry {
        name: String,
        target: Option<Ino>,
        group: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct Inode {
    is_dir: bool,
    current: State,
    durable: State,
    unsynced: Vec<Mutation>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct MemTree {
    inodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    next_group: u64,
    rng: ChaCha8Rng,
    watch_root: Option<String>,
    changes: Changes,
    ops_until_crash: Option<u64>,
    crashed: bool,
    /// Counts mutations and syncs, for tests that crash "at every step".
    ops_total: u64,
    /// A sync started and not yet performed (see `sync_done`).
    sync_pending: Option<(Vec<String>, Vec<String>)>,
    /// Path -> inode of paths looked up since the last removal or
    /// replacement of a directory entry (a creation keeps every cached
    /// path valid). The walk through each directory's entries was a tenth
    /// of a replica seed's time. Never iterated: no effect on determinism.
    paths: RefCell<HashMap<String, Ino>>,
}

impl MemTree {
    /// An empty tree; `seed` drives every crash decision.
    pub fn new(seed: u64) -> MemTree {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::new(true, 0o755));
        // The root itself is durable from the start.
        MemTree {
            inodes,
            next_ino: 1,
            next_group: 1,
            rng: ChaCha8Rng::seed_from_u64(seed),
            watch_root: None,
            changes: Changes::default(),
            ops_until_crash: None,
            crashed: false,
            ops_total: 0,
            sync_pending: None,
            paths: RefCell::new(HashMap::new()),
        }
    }

    /// Makes the `n`-th mutation or sync from now (0 = the next one) fail as
    /// a crash; the tree then refuses everything until [`MemTree::crash`].
    pub fn crash_after_ops(&mut self, n: u64) {
        self.ops_until_crash = Some(n);
    }

    /// Mutations and syncs performed so far.
    pub fn ops_total(&self) -> u64 {
        self.ops_total
    }

    /// True after an injected crash, until [`MemTree::crash`].
    pub fn is_crashed(&self) -> bool {
        self.crashed
    }

    /// The machine crashes and restarts: every inode keeps its durable state
    /// plus a random in-order subset of its unsynced mutations (see the
    /// module documentation); watches are dropped.
    pub fn crash(&mut self) {
        let mut rng = self.rng.clone();
        self.crash_choosing(&mut |_| rng.gen_bool(0.5), true);
        self.rng = rng;
    }

    /// Unsynced mutations, in the order [`MemTree::crash_with`] numbers
    /// them (by inode, then in the order they were made; the two halves of
    /// a rename count as one, at the first).
    pub fn unsynced_count(&self) -> usize {
        let mut groups = std::collections::HashSet::new();
        self.inodes
            .values()
            .flat_map(|inode| &inode.unsynced)
            .filter(|m| match m {
                Mutation::Entry { group: Some(g), .. } => groups.insert(*g),
                _ => true,
            })
            .count()
    }

    /// A crash that keeps exactly the unsynced mutations `keep` says yes
    /// to (numbered as in [`MemTree::unsynced_count`]), none torn: for
    /// tests that enumerate every state a crash can leave.
    pub fn crash_with(&mut self, keep: &mut dyn FnMut(usize) -> bool) {
        self.crash_choosing(keep, false);
    }

    fn crash_choosing(&mut self, keep_nth: &mut dyn FnMut(usize) -> bool, tear: bool) {
        let mut group_kept: HashMap<u64, bool> = HashMap::new();
        let mut nth = 0usize;
        // In inode order (a BTreeMap): the seed decides everything.
        let inos: Vec<Ino> = self.inodes.keys().copied().collect();
        for ino in inos {
            let inode = self.inodes.get_mut(&ino).expect("listed inode");
            let mut state = inode.durable.clone();
            for mutation in std::mem::take(&mut inode.unsynced) {
                let mut decide = || {
                    nth += 1;
                    keep_nth(nth - 1)
                };
                let keep = match &mutation {
                    Mutation::Entry { group: Some(g), .. } => {
                        *group_kept.entry(*g).or_insert_with(&mut decide)
                    }
                    _ => decide(),
                };
                if !keep {
                    continue;
                }
                let mutation = match mutation {
                    Mutation::Write { offset, data }
                        if tear && data.len() > 1 && self.rng.gen_bool(0.25) =>
                    {
                        let torn_len = self.rng.gen_range(1..data.len());
                        Mutation::Write {
                            offset,
                            data: data[..torn_len].to_vec(),
                        }
                    }
                    other => other,
                };
                apply_mutation(&mut state, &mutation);
            }
            inode.current = state.clone();
            inode.durable = state;
        }
        self.collect_garbage();
        self.paths.get_mut().clear();
        self.watch_root = None;
        self.changes = Changes::default();
        self.ops_until_crash = None;
        self.crashed = false;
        self.sync_pending = None;
    }

    /// Drops inodes no longer reachable from the root (lost entries).
    fn collect_garbage(&mut self) {
        let mut reachable: HashSet<Ino> = HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !reachable.insert(ino) {
                continue;
            }
            if let Some(inode) = self.inodes.get(&ino) {
                for child in inode.current.entries.values() {
                    if self.inodes.contains_key(child) {
                        stack.push(*child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reachable.contains(ino));
        // Entries pointing at inodes that never existed durably are dropped too.
        let live: HashSet<Ino> = self.inodes.keys().copied().collect();
        for inode in self.inodes.values_mut() {
            inode
                .current
                .entries
                .retain(|_, child| live.contains(child));
            inode
                .durable
                .entries
                .retain(|_, child| live.contains(child));
        }
    }

    fn check_alive(&self) -> Result<(), TreeError> {
        if self.crashed {
            return Err(TreeError::Crashed);
        }
        Ok(())
    }

    /// Counts one mutation or sync against the crash budget.
    fn step(&mut self) -> Result<(), TreeError> {
        self.check_alive()?;
        if let Some(left) = self.ops_until_crash {
            if left == 0 {
                self.crashed = true;
                return Err(TreeError::Crashed);
            }
            self.ops_until_crash = Some(left - 1);
        }
        self.ops_total += 1;
        Ok(())
    }

    fn lookup(&self, path: &str) -> Option<Ino> {
        if path.is_empty() {
            return Some(ROOT);
        }
        if let Some(&ino) = self.paths.borrow().get(path) {
            debug_assert_eq!(self.walk(path), Some(ino), "{path}: cached inode");
            return Some(ino);
        }
        let ino = self.walk(path)?;
        let mut paths = self.paths.borrow_mut();
        if paths.len() >= PATH_CACHE_MAX {
            paths.clear();
        }
        paths.insert(path.to_string(), ino);
        Some(ino)
    }

    /// Checks `path` and looks it up. A cached path resolved before, one
    /// existing entry at a time, and every entry's name was checked when
    /// it was made: it is valid.
    fn resolve(&self, path: &str) -> Result<Option<Ino>, TreeError> {
        if let Some(&ino) = self.paths.borrow().get(path) {
            return Ok(Some(ino));
        }
        check_path_or_root(path)?;
        Ok(self.lookup(path))
    }

    /// Resolves `path` one directory entry at a time.
    fn walk(&self, path: &str) -> Option<Ino> {
        let mut ino = ROOT;
        for name in path.split('/') {
            let inode = self.inodes.get(&ino)?;
            if !inode.is_dir {
                return None;
            }
            ino = *inode.current.entries.get(name)?;
        }
        Some(ino)
    }

    fn lookup_kind(&self, path: &str, want_dir: bool) -> Result<Ino, TreeError> {
        match self.resolve(path)? {
            Some(ino) if self.inodes[&ino].is_dir == want_dir => Ok(ino),
            Some(_) => Err(TreeError::BadPath {
                path: path.to_string(),
                reason: if want_dir {
                    "not a directory"
                } else {
                    "not a regular file"
                },
            }),
            None => Err(TreeError::NotFound(path.to_string())),
        }
    }

    fn mutate(&mut self, ino: Ino, mutation: Mutation) {
        let inode = self.inodes.get_mut(&ino).expect("looked-up inode");
        if let Mutation::Entry { name, target, .. } = &mutation {
            // A removed or replaced entry invalidates every path through it.
            if target.is_none() || inode.current.entries.contains_key(name) {
                self.paths.get_mut().clear();
            }
        }
        apply_mutation(&mut inode.current, &mutation);
        inode.unsynced.push(mutation);
        if inode.unsynced.len() > UNSYNCED_MUTATIONS_MAX {
            write_back_oldest(inode);
        }
    }

    fn record_change(&mut self, path: &str, subtree: bool) {
        let Some(root) = &self.watch_root else { return };
        if !is_under(path, root) || path == root {
            return;
        }
        let rel = if root.is_empty() {
            path.to_string()
        } else {
            path[root.len() + 1..].to_string()
        };
        if subtree {
            self.changes.rescan.insert(rel.clone());
        }
        self.changes.paths.insert(rel);
    }

    fn new_inode(&mut self, is_dir: bool, mode: u32) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(is_dir, mode));
        ino
    }

    fn set_entry(
        &mut self,
        path: &str,
        target: Option<Ino>,
        group: Option<u64>,
    ) -> Result<(), TreeError> {
        let dir = self.lookup_kind(parent(path), true)?;
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        self.mutate(
            dir,
            Mutation::Entry {
                name,
                target,
                group,
            },
        );
        Ok(())
    }
}

impl Inode {
    fn new(is_dir: bool, mode: u32) -> Inode {
        let state = State {
            mode,
            ..State::default()
        };
        Inode {
            is_dir,
            current: state.clone(),
            // A new inode's mode is part of its creation: it exists durably
            // only through its directory entry, which is synced separately.
            durable: state,
            unsynced: Vec::new(),
        }
    }
}

fn apply_mutation(state: &mut State, mutation: &Mutation) {
    match mutation {
        Mutation::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if state.data.len() < end {
                state.data.resize(end, 0);
            }
            state.data[*offset as usize..end].copy_from_slice(data);
        }
        Mutation::SetLen(len) => state.data.resize(*len as usize, 0),
        Mutation::Mode(mode) => state.mode = *mode,
        Mutation::Entry { name, target, .. } => match target {
            Some(ino) => {
                state.entries.insert(name.clone(), *ino);
            }
            None => {
                state.entries.remove(name);
            }
        },
    }
}

fn check_path_or_root(path: &str) -> Result<(), TreeError> {
    if path.is_empty() {
        return Ok(());
    }
    check_rel_path(path)
}

impl FileTree for MemTree {
    fn stat(&mut self, path: &str) -> Result<Option<Meta>, TreeError> {
        self.check_alive()?;
        Ok(self.resolve(path)?.map(|ino| {
            let inode = &self.inodes[&ino];
            Meta {
                kind: if inode.is_dir { Kind::Dir } else { Kind::File },
                mode: inode.current.mode,
                size_bytes: if inode.is_dir {
                    0
                } else {
                    inode.current.data.len() as u64
                },
                links: 1,
            }
        }))
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>, TreeError> {
        self.check_alive()?;
        let ino = self.lookup_kind(path, true)?;
        Ok(self.inodes[&ino].current.entries.keys().cloned().collect())
    }

    fn with_file<R>(&mut self, path: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, TreeError> {
        self.check_alive()?;
        let ino = self.lookup_kind(path, false)?;
        Ok(f(&self.inodes[&ino].current.data))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        self.with_file(path, |bytes| {
            let start = (offset as usize).min(bytes.len());
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
            n
        })
    }

    fn create_file(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        check_rel_path(path)?;
        self.step()?;
        match self.lookup(path) {
            Some(ino) if self.inodes[&ino].is_dir => {
                return Err(TreeError::BadPath {
                    path: path.to_string(),
                    reason: "a directory is in the way",
                })
            }
            Some(ino) => {
                self.mutate(ino, Mutation::SetLen(0));
                self.mutate(ino, Mutation::Mode(mode));
            }
            None => {
                self.lookup_kind(parent(path), true)?;
                let ino = self.new_inode(false, mode);
                self.set_entry(path, Some(ino), None)?;
            }
        }
        self.record_change(path, false);
        Ok(())
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), TreeError> {
        let ino = self.lookup_kind(path, false)?;
        self.step()?;
        if !data.is_empty() {
            let data = data.to_vec();
            self.mutate(ino, Mutation::Write { offset, data });
        }
        self.record_change(path, false);
        Ok(())
    }

    fn set_len(&mut self, path: &str, size_bytes: u64) -> Result<(), TreeError> {
        let ino = self.lookup_kind(path, false)?;
        self.step()?;
        self.mutate(ino, Mutation::SetLen(size_bytes));
        self.record_change(path, false);
        Ok(())
    }

    fn set_mode(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        check_path_or_root(path)?;
        let ino = self
            .lookup(path)
            .ok_or_else(|| TreeError::NotFound(path.to_string()))?;
        self.step()?;
        self.mutate(ino, Mutation::Mode(mode & 0o7777));
        self.record_change(path, false);
        Ok(())
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        check_rel_path(path)?;
        if let Some(ino) = self.lookup(path) {
            if self.inodes[&ino].is_dir {
                return Ok(());
            }
            return Err(TreeError::BadPath {
                path: path.to_string(),
                reason: "a file is in the way",
            });
        }
        self.lookup_kind(parent(path), true)?;
        self.step()?;
        let ino = self.new_inode(true, mode & 0o7777);
        self.set_entry(path, Some(ino), None)?;
        self.record_change(path, true);
        Ok(())
    }

    fn remove_file(&mut self, path: &str) -> Result<(), TreeError> {
        check_rel_path(path)?;
        match self.lookup(path) {
            None => Ok(()),
            Some(ino) if self.inodes[&ino].is_dir => Err(TreeError::BadPath {
                path: path.to_string(),
                reason: "is a directory",
            }),
            Some(_) => {
                self.step()?;
                self.set_entry(path, None, None)?;
                self.record_change(path, false);
                Ok(())
            }
        }
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), TreeError> {
        check_rel_path(path)?;
        match self.lookup(path) {
            None => Ok(()),
            Some(ino) if !self.inodes[&ino].is_dir => Err(TreeError::BadPath {
                path: path.to_string(),
                reason: "not a directory",
            }),
            Some(ino) if !self.inodes[&ino].current.entries.is_empty() => Err(TreeError::BadPath {
                path: path.to_string(),
                reason: "directory not empty",
            }),
            Some(_) => {
                self.step()?;
                self.set_entry(path, None, None)?;
                self.record_change(path, false);
                Ok(())
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), TreeError> {
        check_rel_path(from)?;
        check_rel_path(to)?;
        let ino = self
            .lookup(from)
            .ok_or_else(|| TreeError::NotFound(from.to_string()))?;
        let is_dir = self.inodes[&ino].is_dir;
        if is_under(to, from) {
            return Err(TreeError::BadPath {
                path: to.to_string(),
                reason: "rename into itself",
            });
        }
        if let Some(existing) = self.lookup(to) {
            let existing = &self.inodes[&existing];
            if existing.is_dir && (!is_dir || !existing.current.entries.is_empty()) {
                return Err(TreeError::BadPath {
                    path: to.to_string(),
                    reason: "a directory is in the way",
                });
            }
            if !existing.is_dir && is_dir {
                return Err(TreeError::BadPath {
                    path: to.to_string(),
                    reason: "a file is in the way",
                });
            }
        }
        self.lookup_kind(parent(to), true)?;
        self.step()?;
        let group = self.next_group;
        self.next_group += 1;
        self.set_entry(from, None, Some(group))?;
        self.set_entry(to, Some(ino), Some(group))?;
        self.record_change(from, false);
        self.record_change(to, is_dir);
        Ok(())
    }

    fn copy_file(&mut self, from: &str, to: &str) -> Result<(), TreeError> {
        let source = self.lookup_kind(from, false)?;
        let (data, mode) = {
            let state = &self.inodes[&source].current;
            (state.data.clone(), state.mode)
        };
        self.create_file(to, mode)?;
        self.write_at(to, 0, &data)?;
        Ok(())
    }

    fn sync(&mut self, files: &[String], dirs: &[String]) -> Result<(), TreeError> {
        self.step()?;
        for path in files.iter().chain(dirs.iter()) {
            check_path_or_root(path)?;
            if let Some(ino) = self.lookup(path) {
                let inode = self.inodes.get_mut(&ino).expect("looked-up inode");
                // Every change to `current` is in `unsynced` (see `mutate`),
                // so replaying them makes `durable` equal `current` at the
                // cost of the bytes written, not of the file's size (cloning
                // grew with every append to a journal).
                for mutation in inode.unsynced.drain(..) {
                    apply_mutation(&mut inode.durable, &mutation);
                }
                debug_assert!(inode.durable == inode.current, "{path}: replayed state");
            }
        }
        Ok(())
    }

    fn sync_start(&mut self, files: Vec<String>, dirs: Vec<String>) -> Result<(), TreeError> {
        self.check_alive()?;
        assert!(self.sync_pending.is_none(), "one sync in flight");
        self.sync_pending = Some((files, dirs));
        Ok(())
    }

    /// The sync happens at the first poll after its start, so a crash in
    /// between finds nothing of it durable (and a random part of it kept,
    /// as for any unsynced write).
    fn sync_done(&mut self) -> Result<bool, TreeError> {
        self.check_alive()?;
        let Some((files, dirs)) = self.sync_pending.take() else {
            return Ok(true);
        };
        self.sync(&files, &dirs)?;
        Ok(true)
    }

    fn watch(&mut self, root: &str) -> Result<(), TreeError> {
        self.check_alive()?;
        self.lookup_kind(root, true)?;
        self.watch_root = Some(root.to_string());
        self.changes = Changes::default();
        Ok(())
    }

    fn take_changes(&mut self) -> Result<Changes, TreeError> {
        self.check_alive()?;
        Ok(std::mem::take(&mut self.changes))
    }
}

/// A whole tree's content, for comparisons in tests: path → (is_dir, mode, data).
pub type Listing = BTreeMap<String, (bool, u32, Vec<u8>)>;

/// Lists everything under `root` of any tree (paths relative to `root`).
pub fn listing<T: FileTree>(tree: &mut T, root: &str) -> Result<Listing, TreeError> {
    let mut out = Listing::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for name in tree.list(&join(root, &rel))? {
            let child_rel = join(&rel, &name);
            let child = join(root, &child_rel);
            let Some(meta) = tree.stat(&child)? else {
                continue;
            };
            match meta.kind {
                Kind::Dir => {
                    out.insert(child_rel.clone(), (true, meta.mode, Vec::new()));
                    stack.push(child_rel);
                }
                _ => {
                    let data = tree.with_file(&child, |bytes| bytes.to_vec())?;
                    out.insert(child_rel, (false, meta.mode, data));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_never_synced_keeps_a_bounded_history_written_back_in_order() {
        let mut tree = MemTree::new(5);
        tree.create_file("f", 0o644).unwrap();
        tree.sync(&[], &["".into()]).unwrap();
        let writes = 3 * UNSYNCED_MUTATIONS_MAX;
        for i in 0..writes {
            tree.write_at("f", i as u64, &[i as u8]).unwrap();
        }
        assert!(tree.unsynced_count() <= UNSYNCED_MUTATIONS_MAX + 1);
        tree.crash();
        // What was written back survives, in order; the rest may not.
        let data = tree.with_file("f", |b| b.to_vec()).unwrap();
        let kept = writes - UNSYNCED_MUTATIONS_MAX - 1;
        assert!(data.len() >= kept, "{} bytes survived", data.len());
        for (i, byte) in data.iter().enumerate().take(kept) {
            assert_eq!(*byte, i as u8);
        }
    }

    #[test]
    fn unsynced_data_may_be_lost_synced_data_is_not() {
        let mut lost = 0;
        for seed in 0..64 {
            let mut tree = MemTree::new(seed);
            tree.mkdir("d", 0o755).unwrap();
            tree.create_file("d/f", 0o644).unwrap();
            tree.write_at("d/f", 0, b"durable").unwrap();
            tree.sync(&["d/f".into()], &["".into(), "d".into()])
                .unwrap();
            tree.write_at("d/f", 0, b"LOST?").unwrap();
            tree.crash();
            let data = tree.with_file("d/f", |b| b.to_vec()).unwrap();
            if data == b"durable" {
                lost += 1;
            } else {
                assert_eq!(data.len(), 7);
                assert!(data.starts_with(b"L"), "{data:?}");
            }
        }
        assert!(lost > 0 && lost < 64);
    }

    #[test]
    fn unsynced_entries_may_be_lost() {
        let mut seen = [false, false];
        for seed in 0..32 {
            let mut tree = MemTree::new(seed);
            tree.create_file("f", 0o644).unwrap();
            tree.crash();
            seen[tree.stat("f").unwrap().is_some() as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn crash_after_ops_stops_everything() {
        let mut tree = MemTree::new(1);
        tree.crash_after_ops(1);
        tree.create_file("a", 0o644).unwrap();
        assert!(matches!(
            tree.create_file("b", 0o644),
            Err(TreeError::Crashed)
        ));
        assert!(matches!(tree.stat("a"), Err(TreeError::Crashed)));
        tree.crash();
        assert!(tree.stat("b").unwrap().is_none());
    }

    #[test]
    fn changes_are_tracked_under_root() {
        let mut tree = MemTree::new(1);
        tree.mkdir("live", 0o755).unwrap();
        tree.create_file("outside", 0o644).unwrap();
        tree.watch("live").unwrap();
        tree.mkdir("live/d", 0o755).unwrap();
        tree.create_file("live/d/x", 0o644).unwrap();
        tree.rename("live/d/x", "live/y").unwrap();
        tree.write_at("outside", 0, b"z").unwrap();
        let changes = tree.take_changes().unwrap();
        let paths: Vec<&str> = changes.paths.iter().map(|s| s.as_str()).collect();
        assert_eq!(paths, ["d", "d/x", "y"]);
        assert!(changes.rescan.contains("d"));
        assert!(tree.take_changes().unwrap().is_empty());
    }
}
