//! The file-tree interface the delta engine works over.
//!
//! What it does: names the handful of operations the engine needs on one
//! server's directory (stat, list, map a file's bytes, create, write, resize,
//! remove, sync, and change tracking for the working copy), so that one engine
//! code path runs over real files ([`super::RealTree`]) and over the
//! deterministic simulator's in-memory tree ([`super::MemTree`]).
//!
//! What it does not do: decide anything. Paths are relative, `/`-separated,
//! UTF-8, without `.`/`..` components, and never start or end with `/`
//! ([`check_rel_path`]). The empty string names the tree's root.
//!
//! Invariants every implementation keeps:
//! - Mutations are visible to later reads at once; they are durable only after
//!   [`FileTree::sync`] covered them (the file for data and mode, the parent
//!   directory for the entry). A crash may lose any unsynced mutation.
//! - [`FileTree::take_changes`] reports a superset of the paths under the
//!   watched root that changed since the previous call (it may over-report,
//!   never under-report), or says it lost track (`rescan`).

use std::collections::BTreeSet;

/// The kinds of filesystem object the engine distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets and device nodes.
    Special,
}

/// What `stat` reports (never follows symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub size_bytes: u64,
    /// Hard-link count (1 for files that are not hard-linked).
    pub links: u64,
}

/// Errors of a file tree. They are *storage* faults (or, for `Unsupported`,
/// the application put something in its directory the engine cannot copy).
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("storage I/O error on {path:?}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no such file or directory: {0:?}")]
    NotFound(String),
    #[error("path {path:?} is not usable: {reason}")]
    BadPath { path: String, reason: &'static str },
    /// The simulated machine crashed (fault injection): nothing after this
    /// operation happened.
    #[error("simulated crash")]
    Crashed,
    #[error("change notification failed: {0}")]
    Watch(String),
    /// The tree cannot tell what the application may have changed (for
    /// example, which files its processes map): the command must fail.
    /// Nothing is lost: the next drain reports everything as changed.
    #[error("{0}")]
    Untrackable(String),
}

impl TreeError {
    pub fn io(path: &str, source: std::io::Error) -> TreeError {
        if source.kind() == std::io::ErrorKind::NotFound {
            return TreeError::NotFound(path.to_string());
        }
        TreeError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Paths (relative to the watched root) that may have changed since the last
/// [`FileTree::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths whose entry, data or mode may have changed.
    pub paths: BTreeSet<String>,
    /// Directories whose whole subtree must be examined (new or moved-in
    /// directories, whose contents no event may have described). `""` means
    /// the whole watched root (for example after a notification overflow).
    pub rescan: BTreeSet<String>,
    /// Files that may have changed without any notification (mapped shared
    /// and writable, or open for writing): only their content can tell.
    pub suspects: BTreeSet<String>,
}

impl Changes {
    /// Nothing was notified and nothing is suspect.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.rescan.is_empty() && self.suspects.is_empty()
    }

    /// Something was notified (suspects aside).
    pub fn notified(&self) -> bool {
        !self.paths.is_empty() || !self.rescan.is_empty()
    }

    pub fn merge(&mut self, other: Changes) {
        self.paths.extend(other.paths);
        self.rescan.extend(other.rescan);
        self.suspects.extend(other.suspects);
    }
}

/// One server's directory, as the delta engine sees it.
pub trait FileTree {
    /// `lstat`: `Ok(None)` when nothing is at `path`.
    fn stat(&mut self, path: &str) -> Result<Option<Meta>, TreeError>;
    /// The names in directory `path`, sorted.
    fn list(&mut self, path: &str) -> Result<Vec<String>, TreeError>;
    /// Calls `f` with the whole content of regular file `path` (a memory map
    /// on real files). The file must not change while `f` runs.
    fn with_file<R>(&mut self, path: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, TreeError>;
    /// Reads bytes of regular file `path` from `offset` into `buf`; returns
    /// how many (fewer at the end of the file). For reading a few pages of
    /// a large file without reading it whole.
    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError>;
    /// Makes `path` an empty regular file with `mode`, replacing a file that
    /// is there (a directory there is an error: remove it first).
    fn create_file(&mut self, path: &str, mode: u32) -> Result<(), TreeError>;
    /// Writes `data` at `offset` of existing regular file `path` (extending it
    /// if needed).
    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), TreeError>;
    /// Truncates or zero-extends existing regular file `path`.
    fn set_len(&mut self, path: &str, size_bytes: u64) -> Result<(), TreeError>;
    fn set_mode(&mut self, path: &str, mode: u32) -> Result<(), TreeError>;
    /// Creates directory `path` (its parent must exist); `Ok` if one is there.
    fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), TreeError>;
    /// Removes file (or symlink, or special file) `path`; `Ok` if absent.
    fn remove_file(&mut self, path: &str) -> Result<(), TreeError>;
    /// Removes empty directory `path`; `Ok` if absent.
    fn remove_dir(&mut self, path: &str) -> Result<(), TreeError>;
    /// Renames `from` to `to`, replacing a file at `to`.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), TreeError>;
    /// Copies regular file `from` to `to` (replacing `to`), data and mode.
    fn copy_file(&mut self, from: &str, to: &str) -> Result<(), TreeError>;
    /// Makes the data and mode of `files` and the entries of `dirs` durable.
    /// Paths that no longer exist are skipped. Real trees do this on the
    /// dedicated fsync thread; the call returns when all are durable.
    fn sync(&mut self, files: &[String], dirs: &[String]) -> Result<(), TreeError>;
    /// Starts making `files` and `dirs` durable, as [`FileTree::sync`] does,
    /// without waiting: the caller goes on and asks [`FileTree::sync_done`]
    /// later. At most one such sync is in flight (a second start while one
    /// is unfinished is a caller bug). Writes made after the start may or
    /// may not be covered.
    fn sync_start(&mut self, files: Vec<String>, dirs: Vec<String>) -> Result<(), TreeError>;
    /// Whether the sync started last has completed (`Ok(true)`: everything
    /// it named is durable); an error is the sync's own.
    fn sync_done(&mut self) -> Result<bool, TreeError>;
    /// Starts tracking changes under directory `root` (replacing any earlier
    /// root). Paths in later [`Changes`] are relative to `root`.
    fn watch(&mut self, root: &str) -> Result<(), TreeError>;
    /// Drains the changes seen since the last call (empty when not watching).
    fn take_changes(&mut self) -> Result<Changes, TreeError>;
    /// As [`FileTree::take_changes`], right after one, while the
    /// application stayed quiescent: only what was notified since (the
    /// files the application can write unnoticed were named by that call
    /// and cannot have changed since).
    fn take_notified(&mut self) -> Result<Changes, TreeError> {
        self.take_changes()
    }
}

/// Checks that `path` is a relative path the engine may use (see the module
/// documentation). Names come from peers in deltas and snapshots, so this is
/// the guard against a delta that would write outside the data directory.
pub fn check_rel_path(path: &str) -> Result<(), TreeError> {
    let bad = |reason| {
        Err(TreeError::BadPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    if path.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    for component in path.split('/') {
        if component.is_empty() {
            return bad("empty component (leading, trailing or doubled '/')");
        }
        if component == "." || component == ".." {
            return bad("'.' or '..' component");
        }
        if component.len() > 255 {
            return bad("component longer than 255 bytes");
        }
        if component.contains('\0') {
            return bad("NUL byte");
        }
    }
    Ok(())
}

/// `a/b` from `a` and `b`, where an empty `a` is the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        return name.to_string();
    }
    if name.is_empty() {
        return dir.to_string();
    }
    format!("{dir}/{name}")
}

/// The parent of `path` (`""` for a top-level name).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(at) => &path[..at],
        None => "",
    }
}

/// True when `path` is `prefix` or lies under it (`""` contains everything).
pub fn is_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths() {
        assert!(check_rel_path("a/b.db").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a\0"] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert!(is_under("a/b", "a"));
        assert!(!is_under("ab", "a"));
        assert!(is_under("a", ""));
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("a", "x"), "a/x");
    }
}
