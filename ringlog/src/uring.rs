//! The production disk: one preallocated, pre-written file opened with
//! O_DIRECT, written through io_uring by a dedicated I/O thread.
//!
//! What it does: [`UringDisk`] implements [`Disk`]. `submit` hands a
//! [`FlushJob`] to the I/O thread over a bounded crossbeam channel; the
//! thread issues each stage's writes and its sync as one linked io_uring
//! submission (or, in [`SyncMode::Dsync`], writes flagged `RWF_DSYNC`; in
//! [`SyncMode::Adaptive`], whichever of the two the flushes of a similar size
//! measured faster recently, see [`crate::adaptive`]), and
//! reports each finished job on a completion channel, which the owner polls
//! (`RingLog::poll_durable`) or waits on (`RingLog::complete_flush`). Reads
//! are plain `pread`s on the owner's thread; hard-state writes run there too,
//! through a small ring of the owner's on the path the I/O thread prefers
//! for one-sector flushes. [`create_log`] and [`open_log`] create (preallocate, pre-write,
//! format) and open a log file, with errors that name the path and say what
//! to do.
//!
//! What it does not do: decide what to write (the ring log does) or run
//! more than one job at a time on the device: jobs run one after another,
//! so a later job's writes never reach the disk before an earlier job's
//! sync (the recovery scan relies on that order).
//!
//! Invariants: every buffer handed to the kernel is a 4096-aligned
//! [`AlignedBuf`] owned by the job until its completions are reaped; the I/O
//! thread exits when the owner drops the disk, after finishing queued jobs.

use crate::adaptive::{size_class, SyncChooser, SyncPath};
use crate::disk::{AlignedBuf, Disk, FlushJob};
use crate::format::SECTOR_BYTES;
use crate::ring::{Geometry, Options, RingLog};
use crate::StorageError;
use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// How a flush makes its writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Writes, then `fdatasync`, linked in one io_uring submission.
    Fdatasync,
    /// Writes flagged `RWF_DSYNC` (each write is durable on completion).
    Dsync,
    /// Either of the above, flush by flush, by the latencies measured on
    /// this disk while the log runs ([`crate::adaptive::SyncChooser`]).
    Adaptive,
}

impl SyncMode {
    /// The one path a pinned mode always takes; `None` for `Adaptive`.
    fn pinned(self) -> Option<SyncPath> {
        match self {
            SyncMode::Fdatasync => Some(SyncPath::Fdatasync),
            SyncMode::Dsync => Some(SyncPath::Dsync),
            SyncMode::Adaptive => None,
        }
    }
}

/// Flushes made durable by each path so far (for metrics and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncPathCounts {
    pub fdatasync: u64,
    pub dsync: u64,
}

/// What the I/O thread shares with the owner: its current choice of path
/// for small writes, and how many flushes each path made.
#[derive(Debug, Default)]
struct Shared {
    /// True when `RWF_DSYNC` measured faster for one-sector flushes.
    small_prefers_dsync: AtomicBool,
    fdatasync: AtomicU64,
    dsync: AtomicU64,
}

/// Options of the production driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringOptions {
    pub sync_mode: SyncMode,
    /// Jobs queued to the I/O thread at most (the ring log's
    /// `flushes_in_flight_max` should not exceed it).
    pub jobs_queued_max: usize,
    /// Accept a filesystem that keeps data in memory only (tmpfs, ramfs),
    /// where nothing survives a power loss: for benchmarks and tests only.
    pub allow_volatile_fs: bool,
    /// Microseconds the I/O thread (waiting for a job) and the owner
    /// (waiting in `complete_flush`) poll before they sleep: a thread that
    /// sleeps pays a scheduler wake-up, which on a busy machine costs up to
    /// a tick. 0 never spins.
    pub spin_us: u64,
}

impl Default for UringOptions {
    fn default() -> UringOptions {
        UringOptions {
            // Neither fixed path is right on every machine and load: see
            // docs/PERFORMANCE.md, "ringlog", and the `adaptive` module.
            sync_mode: SyncMode::Adaptive,
            jobs_queued_max: 4,
            allow_volatile_fs: false,
            spin_us: 0,
        }
    }
}

/// A finished flush, as the I/O thread reports it.
#[derive(Debug)]
pub struct Completion {
    pub ticket: u64,
    pub result: io::Result<()>,
    /// The job's buffers, handed back for reuse.
    pub buffers: Vec<AlignedBuf>,
}

/// Spare staging buffers kept for reuse at most.
const SPARE_BUFFERS_MAX: usize = 4;

/// The production disk (see the module documentation).
pub struct UringDisk {
    path: PathBuf,
    file: Arc<File>,
    size_bytes: u64,
    jobs: Option<Sender<FlushJob>>,
    done: Receiver<Completion>,
    thread: Option<JoinHandle<()>>,
    spin_us: u64,
    spare: Vec<AlignedBuf>,
    /// A small ring for the owner's own durable writes (hard state), so they
    /// take the same sync path as flushes.
    owner_ring: IoUring,
    sync_mode: SyncMode,
    shared: Arc<Shared>,
}

/// Receives from `rx`, polling for up to `spin_us` before blocking.
fn recv_spinning<T>(rx: &Receiver<T>, spin_us: u64) -> Result<T, crossbeam_channel::RecvError> {
    if spin_us > 0 {
        let start = std::time::Instant::now();
        let budget = std::time::Duration::from_micros(spin_us);
        while start.elapsed() < budget {
            match rx.try_recv() {
                Ok(value) => return Ok(value),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Err(crossbeam_channel::RecvError)
                }
                Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    rx.recv()
}

fn io_error(path: &Path, kind: io::ErrorKind, what: String) -> StorageError {
    StorageError::Io {
        path: path.display().to_string(),
        source: io::Error::new(kind, what),
    }
}

/// Explains an error from opening or writing the log file.
fn explain(path: &Path, doing: &str, error: io::Error) -> StorageError {
    let advice = match error.raw_os_error() {
        Some(libc::EINVAL) if doing.contains("open") => {
            "the filesystem refuses O_DIRECT (tmpfs and some network or FUSE filesystems do): put \
             the log on a local ext4 or xfs filesystem"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied: run as a user that may read and write this path, or fix the \
             ownership and mode of the file and its directory"
        }
        Some(libc::EROFS) => {
            "the filesystem is read-only: remount it read-write or choose another path"
        }
        Some(libc::ENOENT) => "the directory does not exist: create it first",
        Some(libc::EEXIST) => {
            "a file already exists there: open it instead, or remove it to start afresh"
        }
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            return StorageError::Full(format!(
                "{}: no space left while {doing}: free space or configure a smaller log \
                 (segment_bytes x segment_count)",
                path.display()
            ))
        }
        _ => "",
    };
    let what = if advice.is_empty() {
        format!("{doing}: {error}")
    } else {
        format!("{doing}: {error}; {advice}")
    };
    io_error(path, error.kind(), what)
}

fn open_direct(path: &Path, create: bool) -> Result<File, StorageError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).custom_flags(libc::O_DIRECT);
    if create {
        options.create_new(true).mode(0o600);
    }
    let doing = if create {
        "creating and opening with O_DIRECT"
    } else {
        "opening with O_DIRECT"
    };
    options.open(path).map_err(|e| explain(path, doing, e))
}

/// Creates the ring's I/O, explaining why io_uring is unavailable if it is.
fn new_ring(path: &Path) -> Result<IoUring, StorageError> {
    IoUring::new(64).map_err(|e| {
        let advice = match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring (Linux 5.6 or later is needed)",
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "io_uring is disabled: check the sysctl kernel.io_uring_disabled (0 enables it) \
                 and the container's seccomp profile"
            }
            Some(libc::ENOMEM) => {
                "the locked-memory limit is too low: raise RLIMIT_MEMLOCK (ulimit -l)"
            }
            _ => "io_uring could not be set up",
        };
        io_error(
            path,
            e.kind(),
            format!("io_uring setup failed: {e}; {advice}"),
        )
    })
}

/// Whether io_uring can be set up here (for tests and tools that skip).
pub fn io_uring_available() -> Result<(), String> {
    new_ring(Path::new("(probe)"))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether the filesystem at `dir` accepts O_DIRECT (for tests that skip).
pub fn o_direct_supported(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!(".ringlog-probe-{}", std::process::id()));
    let result = open_direct(&probe, true)
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&probe);
    result
}

impl UringDisk {
    /// Creates a file of `size_bytes`, allocates it and writes zeros over
    /// all of it (so no later write pays for extent conversion), syncs it
    /// and its directory, and opens it.
    pub fn create(
        path: &Path,
        size_bytes: u64,
        options: UringOptions,
    ) -> Result<UringDisk, StorageError> {
        assert_eq!(size_bytes % SECTOR_BYTES as u64, 0);
        let ring = new_ring(path)?;
        let file = open_direct(path, true)?;
        if let Err(e) = check_durable_fs(path, &file, options) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let result = prewrite(path, &file, size_bytes);
        if let Err(e) = result {
            // Leave nothing half-made behind: a later create would refuse it.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| explain(dir, "syncing the directory", e))?;
        }
        UringDisk::start(path, file, ring, options)
    }

    /// Opens an existing log file.
    pub fn open(path: &Path, options: UringOptions) -> Result<UringDisk, StorageError> {
        let ring = new_ring(path)?;
        let file = open_direct(path, false)?;
        check_durable_fs(path, &file, options)?;
        UringDisk::start(path, file, ring, options)
    }

    fn start(
        path: &Path,
        file: File,
        ring: IoUring,
        options: UringOptions,
    ) -> Result<UringDisk, StorageError> {
        assert!(options.jobs_queued_max >= 1);
        let size_bytes = file
            .metadata()
            .map_err(|e| explain(path, "reading the file size", e))?
            .len();
        let owner_ring = new_ring(path)?;
        let file = Arc::new(file);
        let (jobs, jobs_rx) = crossbeam_channel::bounded::<FlushJob>(options.jobs_queued_max);
        let (done_tx, done) = crossbeam_channel::bounded::<Completion>(options.jobs_queued_max + 1);
        let thread_file = Arc::clone(&file);
        let mode = options.sync_mode;
        let spin_us = options.spin_us;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ringlog-io".into())
            .spawn(move || {
                io_thread(
                    ring,
                    thread_file,
                    mode,
                    spin_us,
                    &thread_shared,
                    jobs_rx,
                    done_tx,
                )
            })
            .map_err(|e| explain(path, "starting the I/O thread", e))?;
        Ok(UringDisk {
            path: path.to_path_buf(),
            file,
            size_bytes,
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            spin_us: options.spin_us,
            spare: Vec::new(),
            owner_ring,
            sync_mode: options.sync_mode,
            shared,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes made durable by each path so far.
    pub fn sync_path_counts(&self) -> SyncPathCounts {
        SyncPathCounts {
            fdatasync: self.shared.fdatasync.load(Ordering::Relaxed),
            dsync: self.shared.dsync.load(Ordering::Relaxed),
        }
    }

    /// The path the owner's own durable writes take.
    fn owner_path(&self) -> SyncPath {
        self.sync_mode.pinned().unwrap_or(
            if self.shared.small_prefers_dsync.load(Ordering::Relaxed) {
                SyncPath::Dsync
            } else {
                SyncPath::Fdatasync
            },
        )
    }

    /// The completion channel, for an event loop that selects on it (call
    /// `RingLog::poll_durable` when it is ready; do not receive from it).
    pub fn completions(&self) -> &Receiver<Completion> {
        &self.done
    }

    fn error(&self, doing: &str, e: io::Error) -> StorageError {
        explain(&self.path, doing, e)
    }

    fn keep_spares(&mut self, buffers: Vec<AlignedBuf>) {
        for buf in buffers {
            if self.spare.len() < SPARE_BUFFERS_MAX {
                self.spare.push(buf);
            }
        }
    }
}

impl Drop for UringDisk {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Refuses filesystems that keep data in memory only, unless allowed.
fn check_durable_fs(path: &Path, file: &File, options: UringOptions) -> Result<(), StorageError> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: statfs fills the zeroed struct for an open descriptor.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return Err(explain(
            path,
            "reading the filesystem type",
            io::Error::last_os_error(),
        ));
    }
    let kind = stat.f_type as i64;
    if (kind == TMPFS_MAGIC || kind == RAMFS_MAGIC) && !options.allow_volatile_fs {
        return Err(io_error(
            path,
            io::ErrorKind::Unsupported,
            "the log is on tmpfs (memory), which is not durable: nothing would survive a power \
             loss; put the log on a local ext4 or xfs filesystem"
                .into(),
        ));
    }
    Ok(())
}

fn prewrite(path: &Path, file: &File, size_bytes: u64) -> Result<(), StorageError> {
    // fallocate first, so a full disk fails here at once and not halfway.
    // SAFETY: plain syscall on an owned, open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size_bytes as libc::off_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(explain(path, "preallocating the log file", e));
        }
    }
    const CHUNK_BYTES: u64 = 1 << 20;
    let zeros = AlignedBuf::zeroed(CHUNK_BYTES as usize);
    let mut offset = 0;
    while offset < size_bytes {
        let len = CHUNK_BYTES.min(size_bytes - offset) as usize;
        file.write_all_at(&zeros.as_slice()[..len], offset)
            .map_err(|e| explain(path, "pre-writing the log file with zeros", e))?;
        offset += len as u64;
    }
    file.sync_all()
        .map_err(|e| explain(path, "syncing the pre-written log file", e))
}

impl Disk for UringDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read(&self, offset: u64, buf: &mut AlignedBuf) -> Result<(), StorageError> {
        assert_eq!(offset % SECTOR_BYTES as u64, 0);
        assert_eq!(buf.len() % SECTOR_BYTES, 0);
        self.file
            .read_exact_at(buf.as_mut_slice(), offset)
            .map_err(|e| {
                self.error(
                    &format!("reading {} bytes at offset {offset}", buf.len()),
                    e,
                )
            })
    }

    fn write_durable(&mut self, offset: u64, buf: &AlignedBuf) -> Result<(), StorageError> {
        assert_eq!(offset % SECTOR_BYTES as u64, 0);
        assert_eq!(buf.len() % SECTOR_BYTES, 0);
        // The same durable-write path as flushes (the measured choice), on
        // the owner's thread: the caller needs the result before it goes on.
        let write = crate::disk::Write {
            offset,
            buf: buf.clone(),
        };
        let fd = self.file.as_raw_fd();
        let path = self.owner_path();
        run_stage(&mut self.owner_ring, fd, path, std::slice::from_ref(&write)).map_err(|e| {
            self.error(
                &format!("writing {} bytes at offset {offset}", buf.len()),
                e,
            )
        })
    }

    fn submit(&mut self, job: FlushJob) -> Result<(), StorageError> {
        job.assert_valid(self.size_bytes);
        let jobs = self.jobs.as_ref().expect("the I/O thread runs until drop");
        jobs.send(job).map_err(|_| {
            io_error(
                &self.path,
                io::ErrorKind::BrokenPipe,
                "the ringlog I/O thread has stopped".into(),
            )
        })
    }

    fn wait(&mut self, ticket: u64) -> Result<(), StorageError> {
        let completion = recv_spinning(&self.done, self.spin_us).map_err(|_| {
            io_error(
                &self.path,
                io::ErrorKind::BrokenPipe,
                "the ringlog I/O thread has stopped".into(),
            )
        })?;
        assert_eq!(completion.ticket, ticket, "jobs complete in order");
        self.keep_spares(completion.buffers);
        completion
            .result
            .map_err(|e| self.error(&format!("flush {ticket} (write and sync)"), e))
    }

    fn try_complete(&mut self) -> Option<Result<u64, StorageError>> {
        let completion = self.done.try_recv().ok()?;
        let ticket = completion.ticket;
        self.keep_spares(completion.buffers);
        Some(
            completion
                .result
                .map(|()| ticket)
                .map_err(|e| self.error(&format!("flush {ticket} (write and sync)"), e)),
        )
    }

    fn sync_all(&mut self) -> Result<(), StorageError> {
        self.file.sync_data().map_err(|e| self.error("syncing", e))
    }

    fn spare_buffer(&mut self) -> Option<AlignedBuf> {
        // The largest first: a big flush then needs no growth.
        let at = (0..self.spare.len()).max_by_key(|&i| self.spare[i].capacity())?;
        Some(self.spare.swap_remove(at))
    }
}

/// The I/O thread: runs jobs one after another, reports each.
fn io_thread(
    mut ring: IoUring,
    file: Arc<File>,
    mode: SyncMode,
    spin_us: u64,
    shared: &Shared,
    jobs: Receiver<FlushJob>,
    done: Sender<Completion>,
) {
    let mut chooser = SyncChooser::new();
    while let Ok(job) = recv_spinning(&jobs, spin_us) {
        let bytes: u64 = job
            .stages
            .iter()
            .flatten()
            .map(|w| w.buf.len() as u64)
            .sum();
        let pinned = mode.pinned();
        let path = pinned.unwrap_or_else(|| chooser.choose(bytes));
        let start = Instant::now();
        let mut result = Ok(());
        for stage in &job.stages {
            result = run_stage(&mut ring, file.as_raw_fd(), path, stage);
            if result.is_err() {
                break;
            }
        }
        // Only whole, successful flushes teach the chooser (a failure's
        // latency says nothing about the path), and only when it chooses.
        if result.is_ok() && pinned.is_none() {
            chooser.record(bytes, path, start.elapsed().as_nanos() as u64);
            // The owner's hard-state writes are one sector: only a flush of
            // that class can change its preference.
            if size_class(bytes) == 0 {
                shared.small_prefers_dsync.store(
                    chooser.preferred(bytes) == SyncPath::Dsync,
                    Ordering::Relaxed,
                );
            }
        }
        match path {
            SyncPath::Fdatasync => shared.fdatasync.fetch_add(1, Ordering::Relaxed),
            SyncPath::Dsync => shared.dsync.fetch_add(1, Ordering::Relaxed),
        };
        let buffers = job.stages.into_iter().flatten().map(|w| w.buf).collect();
        let completion = Completion {
            ticket: job.ticket,
            result,
            buffers,
        };
        if done.send(completion).is_err() {
            return;
        }
    }
}

/// One stage: its writes and a sync, durable when this returns `Ok`.
fn run_stage(
    ring: &mut IoUring,
    fd: i32,
    path: SyncPath,
    writes: &[crate::disk::Write],
) -> io::Result<()> {
    // (offset, bytes) still to write; a short write leaves a remainder.
    let mut todo: Vec<(u64, &[u8])> = writes
        .iter()
        .map(|w| (w.offset, w.buf.as_slice()))
        .collect();
    let mut rounds = 0;
    while !todo.is_empty() {
        rounds += 1;
        if rounds > 8 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "writes keep coming back short",
            ));
        }
        let sync = path == SyncPath::Fdatasync;
        let entries = todo.len() + usize::from(sync);
        assert!(entries <= 64, "a stage has one write per segment touched");
        for (i, &(offset, bytes)) in todo.iter().enumerate() {
            let mut sqe = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
                .offset(offset)
                .rw_flags(if sync { 0 } else { libc::RWF_DSYNC })
                .build()
                .user_data(i as u64);
            if sync {
                sqe = sqe.flags(squeue::Flags::IO_LINK);
            }
            // SAFETY: the buffer lives in the job, which outlives the wait
            // below for every completion of this submission.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        if sync {
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(u64::MAX);
            // SAFETY: no buffer.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        let mut reaped = 0;
        let mut next = Vec::new();
        let mut failure = None;
        let mut sync_ok = !sync;
        while reaped < entries {
            ring.submit_and_wait(entries - reaped)?;
            for cqe in ring.completion() {
                reaped += 1;
                let res = cqe.result();
                if cqe.user_data() == u64::MAX {
                    sync_ok = res >= 0;
                    if res < 0 && res != -libc::ECANCELED {
                        failure.get_or_insert(io::Error::from_raw_os_error(-res));
                    }
                    continue;
                }
                let (offset, bytes) = todo[cqe.user_data() as usize];
                if res == -libc::ECANCELED {
                    // An earlier write in the link came back short.
                    next.push((offset, bytes));
                } else if res < 0 {
                    failure.get_or_insert(io::Error::from_raw_os_error(-res));
                } else if (res as usize) < bytes.len() {
                    // Short write: the rest goes again (with its own sync).
                    let done = (res as usize) / SECTOR_BYTES * SECTOR_BYTES;
                    next.push((offset + done as u64, &bytes[done..]));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if next.is_empty() && !sync_ok {
            // The sync was cancelled (a short write broke the link) and
            // nothing is left to write: sync on its own.
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: no buffer.
            unsafe { ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("submission queue full"))?;
            ring.submit_and_wait(1)?;
            let res = ring
                .completion()
                .next()
                .map(|c| c.result())
                .unwrap_or(-libc::EIO);
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
        }
        todo = next;
    }
    Ok(())
}

/// Creates a log file at `path` for `geometry` (preallocated, pre-written,
/// formatted with a random format id) and opens it.
pub fn create_log(
    path: &Path,
    geometry: Geometry,
    options: Options,
    uring: UringOptions,
) -> Result<RingLog<UringDisk>, StorageError> {
    let disk = UringDisk::create(path, geometry.disk_bytes(), uring)?;
    let format_id = rand::random::<u64>();
    RingLog::format(disk, geometry, format_id, options)
}

/// Opens (and recovers) the log file at `path`.
pub fn open_log(
    path: &Path,
    options: Options,
    uring: UringOptions,
) -> Result<RingLog<UringDisk>, StorageError> {
    if !path.exists() {
        return Err(io_error(
            path,
            io::ErrorKind::NotFound,
            "no log file here: create one first (ringlog::uring::create_log)".into(),
        ));
    }
    RingLog::open(UringDisk::open(path, uring)?, options)
}
