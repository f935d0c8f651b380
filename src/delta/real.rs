//! The production [`FileTree`]: real files under a root directory, read
//! through memmap2, synced by a dedicated fsync thread, with inotify change
//! notification for the working copy.
//!
//! What it does:
//! - every path is relative to `root`; reads map the file (`with_file`),
//!   writes use positioned writes on a cached descriptor;
//! - [`FileTree::sync`] hands the batch to the fsync thread (one
//!   `fsync` per file and per directory, in order) and waits for its answer,
//!   so the engine's caller thread never blocks inside `fsync` itself and a
//!   future pipeline can overlap the wait with other work;
//! - change tracking watches every directory of the watched root with
//!   inotify (create, delete, modify, attrib, moves, self events). A new or
//!   moved-in directory is reported as a subtree to rescan (files written in
//!   it before its watch existed are found by that rescan); a queue overflow
//!   is reported as "rescan everything". The engine treats reports as hints
//!   and compares content, so spurious events cost time, never correctness.
//!
//! - stores through a shared writable memory map make no inotify event:
//!   every drain also names the files that the application's processes map
//!   shared and writable or hold open for writing (`writers`), so that the
//!   engine hashes them; where that cannot be told, the drain fails with
//!   `TreeError::Untrackable`.
//!
//! What it does not do: see writes by processes that are not descendants
//! of this one, nor by another machine; docs/DELTA.md lists these limits.
//! It does not follow symlinks.
//!
//! Invariant: while the application is quiescent, every path it changed
//! since the previous [`FileTree::take_changes`] is in the returned set or
//! under one of its rescan roots.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use inotify::{EventMask, Inotify, WatchMask};

use super::tree::{check_rel_path, join, Changes, FileTree, Kind, Meta, TreeError};
use super::writers::Writers;

/// Bound on sync batches queued for the fsync thread.
const SYNC_QUEUE_DEPTH: usize = 64;
/// Batches with at least this many files are synced by several workers.
const SYNC_FAN_OUT_MIN: usize = 16;
const SYNC_WORKERS: usize = 8;
/// Files up to this size are read rather than memory-mapped: a mapping
/// costs page faults and, at unmap, a TLB shootdown across cores (an
/// inter-processor interrupt, slow on virtual machines).
const SMALL_FILE_BYTES_MAX: u64 = 8 << 20;

struct SyncJob {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    reply: Sender<Result<(), (PathBuf, io::Error)>>,
}

/// The dedicated fsync thread.
struct Syncer {
    jobs: Option<Sender<SyncJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start() -> io::Result<Syncer> {
        let (jobs, queue) = bounded::<SyncJob>(SYNC_QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("bunker-fsync".into())
            .spawn(move || sync_loop(queue))?;
        Ok(Syncer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn sync(&self, files: Vec<PathBuf>, dirs: Vec<PathBuf>) -> Result<(), TreeError> {
        let answer = self.queue(files, dirs)?;
        wait_answer(answer.recv().map_err(|_| dead_syncer())?)
    }

    /// Queues a sync job and returns where its answer will arrive.
    fn queue(&self, files: Vec<PathBuf>, dirs: Vec<PathBuf>) -> Result<SyncAnswer, TreeError> {
        let (reply, answer) = bounded(1);
        let jobs = self.jobs.as_ref().ok_or_else(dead_syncer)?;
        jobs.send(SyncJob { files, dirs, reply })
            .map_err(|_| dead_syncer())?;
        Ok(answer)
    }
}

type SyncAnswer = Receiver<Result<(), (PathBuf, io::Error)>>;

fn dead_syncer() -> TreeError {
    TreeError::Io {
        path: String::new(),
        source: io::Error::other("fsync thread is gone"),
    }
}

fn wait_answer(answer: Result<(), (PathBuf, io::Error)>) -> Result<(), TreeError> {
    answer.map_err(|(path, source)| TreeError::Io {
        path: path.display().to_string(),
        source,
    })
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.jobs.take()); // Closes the queue: the thread ends.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sync_loop(queue: Receiver<SyncJob>) {
    for job in queue {
        let result = sync_all(&job.files, &job.dirs);
        let _ = job.reply.send(result);
    }
}

fn sync_all(files: &[PathBuf], dirs: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    if files.len() >= SYNC_FAN_OUT_MIN {
        // Many files (a delta spread over a tree): concurrent fsyncs share
        // journal commits. Files first, in parallel, then the directories.
        let chunk = files.len().div_ceil(SYNC_WORKERS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(chunk)
                .map(|part| scope.spawn(move || sync_paths(part)))
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join().unwrap_or_else(|_| {
                    Err((PathBuf::new(), io::Error::other("fsync worker panicked")))
                })
            })
        })?;
        return sync_paths(dirs);
    }
    sync_paths(files)?;
    sync_paths(dirs)
}

fn sync_paths(paths: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    for path in paths {
        match File::open(path) {
            Ok(file) => file.sync_all().map_err(|e| (path.clone(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err((path.clone(), e)),
        }
    }
    Ok(())
}

/// inotify state for the watched root.
struct Watcher {
    inotify: Inotify,
    root: String,
    /// Watch descriptor → directory path relative to the watched root.
    dirs: HashMap<i32, String>,
    buffer: Vec<u8>,
}

/// See the module documentation.
pub struct RealTree {
    root: PathBuf,
    syncer: Syncer,
    watcher: Option<Watcher>,
    /// The last file opened for writing (most deltas write one file many times).
    open_file: Option<(String, File)>,
    /// Reused buffer for reading small files.
    read_buf: Vec<u8>,
    /// Files the application can write without a notification (mapped
    /// shared and writable, or open for writing); set with the watch.
    writers: Option<Writers>,
    /// Changes drained by a `take_changes` that failed, for the next one.
    carried: Changes,
    /// Where the answer of the sync started by `sync_start` will arrive.
    sync_answer: Option<SyncAnswer>,
}

impl RealTree {
    /// A tree rooted at `root` (created if missing), with its fsync thread.
    pub fn open(root: &Path) -> Result<RealTree, TreeError> {
        fs::create_dir_all(root).map_err(|e| TreeError::io(&root.display().to_string(), e))?;
        let syncer = Syncer::start().map_err(|e| TreeError::io("<fsync thread>", e))?;
        Ok(RealTree {
            root: root.to_path_buf(),
            syncer,
            watcher: None,
            open_file: None,
            read_buf: Vec::new(),
            writers: None,
            carried: Changes::default(),
            sync_answer: None,
        })
    }

    /// The absolute path of `rel` (the application runs in `path("live")`).
    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn full(&self, rel: &str) -> Result<PathBuf, TreeError> {
        if !rel.is_empty() {
            check_rel_path(rel)?;
        }
        Ok(self.path(rel))
    }

    fn writable(&mut self, rel: &str) -> Result<&File, TreeError> {
        if self.open_file.as_ref().is_some_and(|(p, _)| p == rel) {
            return Ok(&self.open_file.as_ref().expect("checked").1);
        }
        let full = self.full(rel)?;
        let file = match OpenOptions::new().write(true).open(&full) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // A read-only mode the application chose: the engine owns
                // the files, so it grants itself write access to replicate.
                let mode = fs::symlink_metadata(&full)
                    .map_err(|e| TreeError::io(rel, e))?
                    .mode();
                fs::set_permissions(&full, fs::Permissions::from_mode((mode & 0o7777) | 0o200))
                    .map_err(|e| TreeError::io(rel, e))?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&full)
                    .map_err(|e| TreeError::io(rel, e))?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| TreeError::io(rel, e))?;
                file
            }
            Err(e) => return Err(TreeError::io(rel, e)),
        };
        self.open_file = Some((rel.to_string(), file));
        Ok(&self.open_file.as_ref().expect("just set").1)
    }

    fn forget_open(&mut self) {
        self.open_file = None;
    }
}

fn kind_of(file_type: fs::FileType) -> Kind {
    if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Special
    }
}

const WATCH_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::ONLYDIR);

impl Watcher {
    /// Watches `dir` (relative to the watched root) and every directory
    /// under it.
    fn add_tree(&mut self, tree_root: &Path, dir: &str) -> Result<(), TreeError> {
        let mut stack = vec![dir.to_string()];
        while let Some(rel) = stack.pop() {
            let full = tree_root.join(&self.root).join(&rel);
            let wd = match self.inotify.watches().add(&full, WATCH_MASK) {
                Ok(wd) => wd,
                // Gone already (or not a directory): its removal is an event.
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
                    continue
                }
                Err(e) => {
                    return Err(TreeError::Watch(format!(
                        "watching {}: {e}",
                        full.display()
                    )))
                }
            };
            self.dirs.insert(wd.get_watch_descriptor_id(), rel.clone());
            let entries = match fs::read_dir(&full) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(TreeError::io(&rel, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| TreeError::io(&rel, e))?;
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    stack.push(join(&rel, &name));
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self, tree_root: &Path) -> Result<Changes, TreeError> {
        let mut changes = Changes::default();
        let mut new_dirs = Vec::new();
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(TreeError::Watch(format!("reading events: {e}"))),
            };
            let mut any = false;
            for event in events {
                any = true;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    changes.rescan.insert(String::new());
                    continue;
                }
                let id = event.wd.get_watch_descriptor_id();
                if event.mask.contains(EventMask::IGNORED) {
                    self.dirs.remove(&id);
                    continue;
                }
                let Some(dir) = self.dirs.get(&id) else {
                    continue;
                };
                let path = match &event.name {
                    Some(name) => join(dir, &name.to_string_lossy()),
                    None if dir.is_empty() => {
                        if event
                            .mask
                            .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                        {
                            changes.rescan.insert(String::new());
                        }
                        continue;
                    }
                    None => dir.clone(),
                };
                let is_dir = event.mask.contains(EventMask::ISDIR);
                if is_dir
                    && event
                        .mask
                        .intersects(EventMask::CREATE | EventMask::MOVED_TO)
                {
                    changes.rescan.insert(path.clone());
                    new_dirs.push(path.clone());
                }
                changes.paths.insert(path);
            }
            if !any {
                break;
            }
        }
        for dir in new_dirs {
            self.add_tree(tree_root, &dir)?;
        }
        Ok(changes)
    }
}

impl FileTree for RealTree {
    fn stat(&mut self, path: &str) -> Result<Option<Meta>, TreeError> {
        let full = self.full(path)?;
        match fs::symlink_metadata(&full) {
            Ok(m) => Ok(Some(Meta {
                kind: kind_of(m.file_type()),
                mode: m.mode() & 0o7777,
                size_bytes: if m.is_file() { m.len() } else { 0 },
                links: if m.is_dir() { 1 } else { m.nlink() },
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // A file where a directory was expected on the way: nothing here.
            Err(e) if e.raw_os_error() == Some(20) => Ok(None),
            Err(e) => Err(TreeError::io(path, e)),
        }
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>, TreeError> {
        let full = self.full(path)?;
        let mut names = Vec::new();
        for entry in fs::read_dir(&full).map_err(|e| TreeError::io(path, e))? {
            let entry = entry.map_err(|e| TreeError::io(path, e))?;
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(raw) => {
                    return Err(TreeError::BadPath {
                        path: join(path, &raw.to_string_lossy()),
                        reason: "file name is not UTF-8",
                    })
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn with_file<R>(&mut self, path: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, TreeError> {
        let full = self.full(path)?;
        let file = File::open(&full).map_err(|e| TreeError::io(path, e))?;
        let meta = file.metadata().map_err(|e| TreeError::io(path, e))?;
        if !meta.is_file() {
            return Err(TreeError::BadPath {
                path: path.to_string(),
                reason: "not a regular file",
            });
        }
        if meta.len() == 0 {
            return Ok(f(&[]));
        }
        if meta.len() <= SMALL_FILE_BYTES_MAX {
            // Small files: one pread into a reused buffer beats setting up
            // and tearing down a mapping (measured: 5x on 64 KiB files).
            let len = meta.len() as usize;
            self.read_buf.resize(len, 0);
            file.read_exact_at(&mut self.read_buf[..len], 0)
                .map_err(|e| TreeError::io(path, e))?;
            return Ok(f(&self.read_buf[..len]));
        }
        // SAFETY: the map is read-only and dropped before returning. The
        // engine's contract is that nobody truncates the file meanwhile (the
        // application is quiescent during capture, and only the engine
        // writes base/); a concurrent truncation could raise SIGBUS.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TreeError::io(path, e))?;
        Ok(f(&map[..]))
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, TreeError> {
        let full = self.full(path)?;
        let file = File::open(&full).map_err(|e| TreeError::io(path, e))?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TreeError::io(path, e)),
            }
        }
        Ok(done)
    }

    fn create_file(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        let full = self.full(path)?;
        self.forget_open();
        if let Ok(m) = fs::symlink_metadata(&full) {
            if m.is_dir() {
                return Err(TreeError::BadPath {
                    path: path.to_string(),
                    reason: "a directory is in the way",
                });
            }
            // Truncate through a fresh inode-preserving open; make it writable first.
            fs::set_permissions(&full, fs::Permissions::from_mode(0o600))
                .map_err(|e| TreeError::io(path, e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&full)
            .map_err(|e| TreeError::io(path, e))?;
        file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| TreeError::io(path, e))?;
        self.open_file = Some((path.to_string(), file));
        Ok(())
    }

    fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), TreeError> {
        let file = self.writable(path)?;
        file.write_all_at(data, offset)
            .map_err(|e| TreeError::io(path, e))
    }

    fn set_len(&mut self, path: &str, size_bytes: u64) -> Result<(), TreeError> {
        let file = self.writable(path)?;
        file.set_len(size_bytes).map_err(|e| TreeError::io(path, e))
    }

    fn set_mode(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        let full = self.full(path)?;
        fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| TreeError::io(path, e))
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        let full = self.full(path)?;
        match fs::DirBuilder::new().mode(mode & 0o7777).create(&full) {
            Ok(()) => {
                // The umask may have cleared bits the delta asks for.
                fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| TreeError::io(path, e))
            }
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && full.is_dir()
                    && !full.is_symlink() =>
            {
                Ok(())
            }
            Err(e) => Err(TreeError::io(path, e)),
        }
    }

    fn remove_file(&mut self, path: &str) -> Result<(), TreeError> {
        let full = self.full(path)?;
        self.forget_open();
        match fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TreeError::io(path, e)),
        }
    }

    fn remove_dir(&mut self, path: &str) -> Result<(), TreeError> {
        let full = self.full(path)?;
        self.forget_open();
        match fs::remove_dir(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TreeError::io(path, e)),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), TreeError> {
        let (full_from, full_to) = (self.full(from)?, self.full(to)?);
        self.forget_open();
        fs::rename(&full_from, &full_to).map_err(|e| TreeError::io(from, e))
    }

    fn copy_file(&mut self, from: &str, to: &str) -> Result<(), TreeError> {
        let (full_from, full_to) = (self.full(from)?, self.full(to)?);
        self.forget_open();
        if let Ok(m) = fs::symlink_metadata(&full_to) {
            if !m.is_dir() {
                fs::remove_file(&full_to).map_err(|e| TreeError::io(to, e))?;
            }
        }
        // std::fs::copy uses copy_file_range, which reflinks where the
        // filesystem can (btrfs, XFS), and copies the permission bits.
        fs::copy(&full_from, &full_to).map_err(|e| TreeError::io(from, e))?;
        Ok(())
    }

    fn sync(&mut self, files: &[String], dirs: &[String]) -> Result<(), TreeError> {
        let mut file_paths = Vec::with_capacity(files.len());
        for f in files {
            file_paths.push(self.full(f)?);
        }
        let mut dir_paths = Vec::with_capacity(dirs.len());
        for d in dirs {
            dir_paths.push(self.full(d)?);
        }
        self.syncer.sync(file_paths, dir_paths)
    }

    fn sync_start(&mut self, files: Vec<String>, dirs: Vec<String>) -> Result<(), TreeError> {
        assert!(self.sync_answer.is_none(), "one sync in flight");
        let file_paths = files
            .iter()
            .map(|f| self.full(f))
            .collect::<Result<_, _>>()?;
        let dir_paths = dirs
            .iter()
            .map(|d| self.full(d))
            .collect::<Result<_, _>>()?;
        self.sync_answer = Some(self.syncer.queue(file_paths, dir_paths)?);
        Ok(())
    }

    fn sync_done(&mut self) -> Result<bool, TreeError> {
        let Some(answer) = &self.sync_answer else {
            return Ok(true);
        };
        match answer.try_recv() {
            Ok(result) => {
                self.sync_answer = None;
                wait_answer(result).map(|()| true)
            }
            Err(crossbeam_channel::TryRecvError::Empty) => Ok(false),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                self.sync_answer = None;
                Err(dead_syncer())
            }
        }
    }

    fn watch(&mut self, root: &str) -> Result<(), TreeError> {
        self.full(root)?;
        let inotify =
            Inotify::init().map_err(|e| TreeError::Watch(format!("inotify_init: {e}")))?;
        let mut watcher = Watcher {
            inotify,
            root: root.to_string(),
            dirs: HashMap::new(),
            buffer: vec![0u8; 64 * 1024],
        };
        watcher.add_tree(&self.root, "")?;
        self.watcher = Some(watcher);
        self.writers = Some(Writers::new(&self.path(root))?);
        self.carried = Changes::default();
        Ok(())
    }

    fn take_notified(&mut self) -> Result<Changes, TreeError> {
        self.forget_open();
        let root = self.root.clone();
        let Some(watcher) = &mut self.watcher else {
            return Ok(Changes::default());
        };
        let mut changes = std::mem::take(&mut self.carried);
        changes.merge(watcher.drain(&root)?);
        Ok(changes)
    }

    fn take_changes(&mut self) -> Result<Changes, TreeError> {
        // The application may have replaced files since: never write
        // through a descriptor opened before.
        self.forget_open();
        let root = self.root.clone();
        let (Some(watcher), Some(writers)) = (&mut self.watcher, &mut self.writers) else {
            return Ok(Changes::default());
        };
        let mut changes = std::mem::take(&mut self.carried);
        changes.merge(watcher.drain(&root)?);
        match writers.take() {
            Ok(paths) => {
                changes.suspects.extend(paths);
                Ok(changes)
            }
            Err(e) => {
                // What the application wrote unnoticed is unknown: the
                // next drain reports everything.
                changes.rescan.insert(String::new());
                self.carried = changes;
                Err(e)
            }
        }
    }
}
