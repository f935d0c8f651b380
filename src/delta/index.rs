//! The state index: per-page xxh3 hashes of every file of a tree, and the
//! incremental state hash over them.
//!
//! What it does: keeps, for one tree (the committed `base`, or the leader's
//! speculative view of `live`), every path's kind, mode, size and per-page
//! hashes, and a hash of the whole tree that each edit updates in time
//! proportional to the edit (not to the tree):
//!
//! - page hash `p_i = xxh3_64(bytes of page i)` (the last page hashes only its
//!   valid bytes);
//! - file content hash `c = Σ_i xxh3_128(i ‖ p_i)` (wrapping sum in u128);
//! - entry hash `e = xxh3_128(path ‖ 0 ‖ kind ‖ mode ‖ size ‖ c)`;
//! - state hash `H = Σ_entries e` (wrapping sum in u128).
//!
//! Sums make every update O(changed pages): subtract the old term, add the
//! new one. They detect accidental divergence (bugs, torn writes, bit rot),
//! not an adversary who crafts collisions (peers are authenticated).
//!
//! What it does not do: read files. Callers hash pages ([`hash_pages`]) and
//! pass the results in.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// Granularity of change detection and of the cached hashes.
pub const PAGE_BYTES: usize = 4096;

/// A 128-bit hash of a whole tree; equal trees have equal hashes.
pub type StateHash = u128;

/// The hash of the empty tree.
pub const EMPTY_STATE_HASH: StateHash = 0;

/// One path's state in an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File(FileNode),
}

/// A regular file: mode, size and per-page hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileNode {
    pub mode: u32,
    pub size_bytes: u64,
    pub pages: Vec<u64>,
    /// Σ_i xxh3_128(i ‖ pages[i]).
    pub content: u128,
}

impl FileNode {
    /// Builds the node of a file whose bytes are `data`.
    pub fn from_bytes(mode: u32, data: &[u8]) -> FileNode {
        let pages = hash_pages(data, 0, page_count(data.len() as u64));
        let content = pages.iter().enumerate().fold(0u128, |sum, (i, hash)| {
            sum.wrapping_add(page_term(i as u64, *hash))
        });
        FileNode {
            mode,
            size_bytes: data.len() as u64,
            pages,
            content,
        }
    }

    /// Replaces page hashes and the size, keeping `content` in step.
    /// `changed` lists (page, new hash) for pages below the new page count;
    /// pages at or beyond the new count are dropped, new pages not listed
    /// must be listed by the caller (asserted).
    pub fn update(&mut self, size_bytes: u64, changed: &[(u64, u64)]) {
        let count_new = page_count(size_bytes) as usize;
        let count_old = self.pages.len();
        while self.pages.len() > count_new {
            let i = self.pages.len() - 1;
            self.content = self
                .content
                .wrapping_sub(page_term(i as u64, self.pages[i]));
            self.pages.pop();
        }
        // Extension pages start unset; each must be listed in `changed`.
        self.pages.resize(count_new, UNSET_PAGE);
        for &(page, hash) in changed {
            let i = page as usize;
            assert!(i < count_new, "page {page} beyond new count {count_new}");
            let old = self.pages[i];
            if i < count_old.min(count_new) {
                self.content = self.content.wrapping_sub(page_term(page, old));
            } else if old != UNSET_PAGE {
                // An extension page listed twice: undo the first listing.
                self.content = self.content.wrapping_sub(page_term(page, old));
            }
            self.pages[i] = hash;
            self.content = self.content.wrapping_add(page_term(page, hash));
        }
        assert!(
            self.pages.iter().all(|h| *h != UNSET_PAGE),
            "extension pages missing ({count_old} -> {count_new})"
        );
        self.size_bytes = size_bytes;
    }
}

/// Placeholder for an extension page not yet hashed (never a real hash in
/// practice; the assertion in `update` catches a caller that forgot one).
const UNSET_PAGE: u64 = 0x005E_ED0F_DEAD_BEEF;

/// Number of pages of a file of `size_bytes`.
pub fn page_count(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(PAGE_BYTES as u64)
}

/// Hashes of pages `first..first + count` of `data` (a whole file).
pub fn hash_pages(data: &[u8], first: u64, count: u64) -> Vec<u64> {
    (first..first + count)
        .map(|page| {
            let start = (page as usize) * PAGE_BYTES;
            let end = (start + PAGE_BYTES).min(data.len());
            assert!(
                start < end,
                "page {page} outside a file of {} bytes",
                data.len()
            );
            xxh3_64(&data[start..end])
        })
        .collect()
}

/// The hash of a full page of zeros.
pub fn zero_page_hash() -> u64 {
    xxh3_64(&[0u8; PAGE_BYTES])
}

fn page_term(page: u64, hash: u64) -> u128 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&page.to_le_bytes());
    buf[8..].copy_from_slice(&hash.to_le_bytes());
    xxh3_128(&buf)
}

fn entry_hash(path: &str, node: &Node) -> u128 {
    let mut buf = Vec::with_capacity(path.len() + 48);
    buf.extend_from_slice(path.as_bytes());
    buf.push(0);
    match node {
        Node::Dir { mode } => {
            buf.push(b'd');
            buf.extend_from_slice(&mode.to_le_bytes());
        }
        Node::File(file) => {
            buf.push(b'f');
            buf.extend_from_slice(&file.mode.to_le_bytes());
            buf.extend_from_slice(&file.size_bytes.to_le_bytes());
            buf.extend_from_slice(&file.content.to_le_bytes());
        }
    }
    xxh3_128(&buf)
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateIndex {
    nodes: BTreeMap<String, Node>,
    hash: StateHash,
}

impl StateIndex {
    pub fn new() -> StateIndex {
        StateIndex::default()
    }

    /// The incremental state hash of the whole tree.
    pub fn hash(&self) -> StateHash {
        self.hash
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn file(&self, path: &str) -> Option<&FileNode> {
        match self.nodes.get(path) {
            Some(Node::File(file)) => Some(file),
            _ => None,
        }
    }

    /// Sets `path` to `node` (replacing what was there; descendants are
    /// the caller's business).
    pub fn insert(&mut self, path: &str, node: Node) {
        if let Some(old) = self.nodes.get(path) {
            self.hash = self.hash.wrapping_sub(entry_hash(path, old));
        }
        self.hash = self.hash.wrapping_add(entry_hash(path, &node));
        self.nodes.insert(path.to_string(), node);
    }

    /// Removes `path` and everything under it.
    pub fn remove_tree(&mut self, path: &str) {
        for victim in self.subtree_paths(path) {
            let node = self.nodes.remove(&victim).expect("listed path");
            self.hash = self.hash.wrapping_sub(entry_hash(&victim, &node));
        }
    }

    /// Edits file `path` in place through `f` (which must keep it a file),
    /// keeping the state hash in step.
    pub fn edit_file(&mut self, path: &str, f: impl FnOnce(&mut FileNode)) {
        let node = self
            .nodes
            .get_mut(path)
            .expect("edit_file on a missing path");
        self.hash = self.hash.wrapping_sub(entry_hash(path, node));
        match node {
            Node::File(file) => f(file),
            Node::Dir { .. } => panic!("edit_file on directory {path:?}"),
        }
        self.hash = self.hash.wrapping_add(entry_hash(path, node));
    }

    /// `path` and every path under it, in sorted order.
    pub fn subtree_paths(&self, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes.contains_key(path) {
            out.push(path.to_string());
        }
        out.extend(self.descendants(path).map(|(p, _)| p.clone()));
        out
    }

    /// Everything strictly under `dir` (`""` = everything), sorted.
    pub fn descendants<'a>(
        &'a self,
        dir: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let (low, high) = if dir.is_empty() {
            (String::new(), None)
        } else {
            // '/' + 1 == '0': every "dir/..." sorts in ["dir/", "dir0").
            (format!("{dir}/"), Some(format!("{dir}0")))
        };
        let range = match &high {
            Some(high) => self.nodes.range(low..high.clone()),
            None => self.nodes.range(low..),
        };
        range
    }

    /// Makes the subtree at `path` equal to `other`'s (for rollback).
    pub fn copy_subtree_from(&mut self, other: &StateIndex, path: &str) {
        self.remove_tree(path);
        for p in other.subtree_paths(path) {
            let node = other.nodes[&p].clone();
            self.insert(&p, node);
        }
    }

    /// Iterates over every path, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Recomputes the state hash from scratch (for assertions and tests).
    pub fn recompute_hash(&self) -> StateHash {
        self.nodes.iter().fold(0u128, |sum, (path, node)| {
            sum.wrapping_add(entry_hash(path, node))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_hash_matches_full_hash() {
        let mut index = StateIndex::new();
        assert_eq!(index.hash(), EMPTY_STATE_HASH);
        index.insert("d", Node::Dir { mode: 0o755 });
        let data = vec![7u8; 3 * PAGE_BYTES + 10];
        index.insert("d/f", Node::File(FileNode::from_bytes(0o644, &data)));
        assert_eq!(index.hash(), index.recompute_hash());

        let mut data2 = data.clone();
        data2[PAGE_BYTES + 3] = 9;
        data2.truncate(2 * PAGE_BYTES + 1);
        let fresh = FileNode::from_bytes(0o644, &data2);
        index.edit_file("d/f", |file| {
            let changed = [
                (1, hash_pages(&data2, 1, 1)[0]),
                (2, hash_pages(&data2, 2, 1)[0]),
            ];
            file.update(data2.len() as u64, &changed);
        });
        assert_eq!(index.file("d/f"), Some(&fresh));
        assert_eq!(index.hash(), index.recompute_hash());

        index.remove_tree("d");
        assert!(index.is_empty());
        assert_eq!(index.hash(), EMPTY_STATE_HASH);
    }

    #[test]
    fn hash_depends_on_content_mode_and_path() {
        let one = |path: &str, mode: u32, data: &[u8]| {
            let mut index = StateIndex::new();
            index.insert(path, Node::File(FileNode::from_bytes(mode, data)));
            index.hash()
        };
        let base = one("a", 0o644, b"xy");
        assert_ne!(base, one("b", 0o644, b"xy"));
        assert_ne!(base, one("a", 0o600, b"xy"));
        assert_ne!(base, one("a", 0o644, b"yx"));
        assert_ne!(base, one("a", 0o644, b"xy\0"));
    }

    #[test]
    fn descendants_do_not_include_siblings_with_common_prefix() {
        let mut index = StateIndex::new();
        for p in ["a", "a/b", "a.txt", "a0", "ab"] {
            index.insert(p, Node::Dir { mode: 0o700 });
        }
        let under: Vec<&String> = index.descendants("a").map(|(p, _)| p).collect();
        assert_eq!(under, ["a/b"]);
        assert_eq!(index.subtree_paths("a"), ["a", "a/b"]);
    }
}
