//! The FUSE filesystem that serves the working copy: every operation goes
//! to the same path under a backing directory, and each one that changes
//! the tree is recorded ([`super::record`]).
//!
//! What it does: keeps a table of the inodes the kernel knows (FUSE inode
//! number -> path under the backing directory, with the kernel's lookup
//! count), follows renames and unlinks in it, and keeps one backing file
//! per open file handle. The kernel's writeback cache is on: the
//! application's writes land in the kernel's page cache, and their pages
//! come here (whole pages, clipped to the file's size; the kernel resolves
//! `O_APPEND`) when they are written back; each is written to the backing
//! file at that offset and recorded.
//!
//! What it does not do: cache data or attributes itself (the kernel does,
//! for `TTL`), special files (refused with `EPERM`, as the delta engine
//! refuses them), names that are not UTF-8 (`EILSEQ`: paths in deltas are
//! UTF-8), or sync to disk on the application's fsync (the replicated log
//! is the durable copy; the working copy is rebuilt from the committed
//! state after a crash).
//!
//! Invariants: inode 1 is the root, path `""`; `by_path` maps exactly the
//! linked paths of `nodes`; a record names the path an operation changed
//! at the moment it changed it (one thread serves the mount, in order).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use super::record::{Record, Recorder};
use crate::delta::tree::is_under;

/// How long the kernel may trust an entry or attributes: only this mount
/// changes the backing directory while it is mounted.
const TTL: Duration = Duration::from_secs(1);
/// Bytes one read returns at most (the kernel asks for at most 128 KiB).
const READ_BYTES_MAX: u32 = 1 << 20;

struct Node {
    /// `None` once unlinked (open handles may still use it).
    path: Option<String>,
    lookups: u64,
}

struct Handle {
    file: File,
    ino: u64,
    /// Opened for writing: the kernel may hold dirty pages of it (a
    /// writable shared mapping keeps its file, and this handle, open).
    writable: bool,
}

/// The mount's inode and handle tables, shared with the [`super::RecordingMount`]
/// that asks which files may hold unwritten pages.
pub struct Table {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl Table {
    fn new() -> Table {
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node {
                path: Some(String::new()),
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), INodeNo::ROOT.0);
        Table {
            nodes,
            by_path,
            next_ino: INodeNo::ROOT.0,
            handles: HashMap::new(),
            next_fh: 0,
        }
    }

    /// The linked paths of files open for writing through the mount.
    pub fn writable_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .handles
            .values()
            .filter(|h| h.writable)
            .filter_map(|h| self.nodes.get(&h.ino).and_then(|n| n.path.clone()))
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.nodes
            .get(&ino.0)
            .and_then(|n| n.path.clone())
            .ok_or(Errno::ENOENT)
    }

    /// The inode for `path`, counting one more kernel lookup.
    fn remember(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups += 1;
                return ino;
            }
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.nodes.insert(
            ino,
            Node {
                path: Some(path.to_string()),
                lookups: 1,
            },
        );
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Paths under `path` (itself included) are no longer linked.
    fn unlink_under(&mut self, path: &str) {
        let gone: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| is_under(p, path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.by_path.remove(&p) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.path = None;
                }
            }
        }
    }

    /// Paths under `from` move under `to`.
    fn move_under(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| is_under(p, from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, _) in &moved {
            self.by_path.remove(p);
        }
        for (p, ino) in moved {
            let new = format!("{to}{}", &p[from.len()..]);
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

/// The working copy served through FUSE, recording into `recorder`.
pub struct RecordingFs {
    backing: PathBuf,
    recorder: Arc<Recorder>,
    table: Arc<Mutex<Table>>,
}

impl RecordingFs {
    pub fn new(backing: PathBuf, recorder: Arc<Recorder>) -> RecordingFs {
        let table = Arc::new(Mutex::new(Table::new()));
        RecordingFs {
            backing,
            recorder,
            table,
        }
    }

    /// The tables, for the mount's owner (see [`Table::writable_paths`]).
    pub fn table_handle(&self) -> Arc<Mutex<Table>> {
        Arc::clone(&self.table)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn real(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.backing.clone()
        } else {
            self.backing.join(rel)
        }
    }

    /// The path of `name` in directory `parent`.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let dir = self.table().path(parent)?;
        let name = name.to_str().ok_or(Errno::from_i32(libc::EILSEQ))?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Errno::EINVAL);
        }
        Ok(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        })
    }

    /// Looks `path` up for the kernel: its attributes under a remembered inode.
    fn entry(&self, path: &str) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.real(path))?;
        let ino = self.table().remember(path);
        Ok(attr(ino, &meta))
    }

    fn meta_of(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<fs::Metadata, Errno> {
        if let Some(fh) = fh {
            if let Some(h) = self.table().handles.get(&fh.0) {
                return Ok(h.file.metadata()?);
            }
        }
        let path = self.table().path(ino)?;
        Ok(fs::symlink_metadata(self.real(&path))?)
    }

    fn add_handle(&self, ino: u64, file: File, flags: i32) -> u64 {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let mut t = self.table();
        t.next_fh += 1;
        let fh = t.next_fh;
        t.handles.insert(
            fh,
            Handle {
                file,
                ino,
                writable,
            },
        );
        fh
    }

    /// Runs `f` on the backing file of `fh`.
    fn with_handle<R>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&File, u64) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let t = self.table();
        let h = t.handles.get(&fh.0).ok_or(Errno::EBADF)?;
        f(&h.file, h.ino)
    }

    /// Records `make(path)` if inode `ino` is still linked.
    fn record_for(&self, ino: u64, make: impl FnOnce(String) -> Record) {
        let path = self.table().nodes.get(&ino).and_then(|n| n.path.clone());
        if let Some(path) = path {
            self.recorder.push(make(path));
        }
    }

    fn do_setattr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
    ) -> Result<FileAttr, Errno> {
        let path = self.table().path(ino)?;
        let real = self.real(&path);
        if let Some(mode) = mode {
            fs::set_permissions(&real, fs::Permissions::from_mode(mode & 0o7777))?;
            self.recorder.push(Record::Chmod {
                path: path.clone(),
                mode: mode & 0o7777,
            });
        }
        if owner.0.is_some() || owner.1.is_some() {
            std::os::unix::fs::lchown(&real, owner.0, owner.1)?;
        }
        if let Some(len) = size {
            match fh {
                Some(fh) => self.with_handle(fh, |f, _| Ok(f.set_len(len)?))?,
                None => OpenOptions::new().write(true).open(&real)?.set_len(len)?,
            }
            self.recorder.push(Record::SetLen {
                path: path.clone(),
                len,
            });
        }
        if times.0.is_some() || times.1.is_some() {
            set_times(&real, times.0, times.1)?;
        }
        let meta = fs::symlink_metadata(&real)?;
        Ok(attr(ino.0, &meta))
    }

    fn do_open(&self, ino: INodeNo, flags: i32) -> Result<u64, Errno> {
        let path = self.table().path(ino)?;
        let file = open_options(flags).open(self.real(&path))?;
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0)?;
            self.recorder.push(Record::SetLen { path, len: 0 });
        }
        Ok(self.add_handle(ino.0, file, flags))
    }

    fn do_create(
        &self,
        parent: INodeNo,
        name: &OsStr,
        (mode, umask): (u32, u32),
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child(parent, name)?;
        let mut options = open_options(flags);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        let mode = mode & !umask & 0o7777;
        let file = options.mode(mode).open(self.real(&path))?;
        // Exactly the application's mode, whatever this process's umask.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        self.recorder.push(Record::Create {
            path: path.clone(),
            mode,
        });
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0)?;
            self.recorder.push(Record::SetLen {
                path: path.clone(),
                len: 0,
            });
        }
        let meta = file.metadata()?;
        let ino = self.table().remember(&path);
        let fh = self.add_handle(ino, file, flags);
        Ok((attr(ino, &meta), fh))
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; size.min(READ_BYTES_MAX) as usize];
        let filled = self.with_handle(fh, |f, _| {
            let mut filled = 0;
            while filled < buf.len() {
                match f.read_at(&mut buf[filled..], offset + filled as u64)? {
                    0 => break,
                    n => filled += n,
                }
            }
            Ok(filled)
        })?;
        buf.truncate(filled);
        Ok(buf)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let ino = self.with_handle(fh, |f, ino| {
            f.write_all_at(data, offset)?;
            Ok(ino)
        })?;
        self.record_for(ino, |path| Record::Write {
            path,
            offset,
            len: u64::from(len),
        });
        Ok(len)
    }

    fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        if dir {
            fs::remove_dir(self.real(&path))?;
            self.recorder.push(Record::Rmdir { path: path.clone() });
        } else {
            fs::remove_file(self.real(&path))?;
            self.recorder.push(Record::Unlink { path: path.clone() });
        }
        self.table().unlink_under(&path);
        Ok(())
    }

    fn do_rename(
        &self,
        from: (INodeNo, &OsStr),
        to: (INodeNo, &OsStr),
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let (src, dst) = (self.child(from.0, from.1)?, self.child(to.0, to.1)?);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        rename_at(&self.real(&src), &self.real(&dst), flags.bits())?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        self.recorder.push(Record::Rename {
            from: src.clone(),
            to: dst.clone(),
            exchange,
        });
        let mut t = self.table();
        if exchange {
            // Through a name no path can have (it holds a NUL).
            t.move_under(&dst, "\0");
            t.move_under(&src, &dst);
            t.move_under("\0", &src);
        } else {
            t.unlink_under(&dst);
            t.move_under(&src, &dst);
        }
        Ok(())
    }

    fn do_readdir(
        &self,
        ino: INodeNo,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), Errno> {
        let path = self.table().path(ino)?;
        let mut names: Vec<(String, FileType, u64)> = Vec::new();
        for entry in fs::read_dir(self.real(&path))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
            names.push((
                entry.file_name().to_string_lossy().into_owned(),
                kind,
                meta.ino(),
            ));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let dots = [
            (".".to_string(), FileType::Directory, ino.0),
            ("..".to_string(), FileType::Directory, INodeNo::ROOT.0),
        ];
        let all = dots.into_iter().chain(names);
        for (i, (name, kind, entry_ino)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry_ino.max(1)), i as u64 + 1, kind, name) {
                break;
            }
        }
        Ok(())
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut options = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        // With the writeback cache the kernel reads the rest of a page it
        // writes partly, through any handle of the file.
        libc::O_WRONLY | libc::O_RDWR => options.read(true).write(true),
        _ => options.read(true),
    };
    // The kernel resolves append offsets, creation and truncation itself
    // (or asks for them separately); the rest passes through.
    let passed = flags
        & !(libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_TRUNC
            | libc::O_NOCTTY);
    options.custom_flags(passed);
    options
}

fn attr(ino: u64, meta: &fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

fn c_path(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn rename_at(from: &Path, to: &Path, flags: u32) -> Result<(), Errno> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}

fn set_times(path: &Path, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Result<(), Errno> {
    let spec = |t: Option<TimeOrNow>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    };
    let times = [spec(atime), spec(mtime)];
    let path = c_path(path)?;
    // SAFETY: a valid path and an array of two timespecs, as utimensat needs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}

impl Filesystem for RecordingFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Writes land in the kernel's page cache and reach this filesystem
        // when their pages are written back: at close, at fsync (which
        // `RecordingMount::take` forces for every file open for writing),
        // or when the kernel chooses. A write then costs a page-cache
        // copy, not a round trip (about 100 us on an idle VM, mostly the
        // wake-up of this thread), and the records come page by page.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE) {
            tracing::warn!(
                ?missing,
                "the kernel offers no FUSE writeback cache: every write is a round trip"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.entry(&p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let mut t = self.table();
        let Some(node) = t.nodes.get_mut(&ino.0) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(nlookup);
        if node.lookups > 0 || t.handles.values().any(|h| h.ino == ino.0) {
            return;
        }
        if let Some(node) = t.nodes.remove(&ino.0) {
            if let Some(path) = node.path {
                if t.by_path.get(&path) == Some(&ino.0) {
                    t.by_path.remove(&path);
                }
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.meta_of(ino, fh) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, fh, mode, (uid, gid), size, (atime, mtime)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = self.table().path(ino);
        let target = path.and_then(|p| Ok(fs::read_link(self.real(&p))?));
        match target {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files arrive through `create`; special files are refused.
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = mode & !umask & 0o7777;
        let made = self.child(parent, name).and_then(|path| {
            let real = self.real(&path);
            fs::DirBuilder::new().mode(mode).create(&real)?;
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
            self.recorder.push(Record::Mkdir {
                path: path.clone(),
                mode,
            });
            self.entry(&path)
        });
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self.child(parent, link_name).and_then(|path| {
            let text = target.to_str().ok_or(Errno::from_i32(libc::EILSEQ))?;
            std::os::unix::fs::symlink(target, self.real(&path))?;
            self.recorder.push(Record::Symlink {
                path: path.clone(),
                target: text.to_string(),
            });
            self.entry(&path)
        });
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename((parent, name), (newparent, newname), flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // The table's lock is not held across the closure (it locks again).
        let from = self.table().path(ino);
        let made = from.and_then(|from| {
            let to = self.child(newparent, newname)?;
            fs::hard_link(self.real(&from), self.real(&to))?;
            self.recorder.push(Record::Link {
                from,
                to: to.clone(),
            });
            self.entry(&to)
        });
        match made {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.table().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The replicated log is the durable copy (module documentation).
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(ino, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match statvfs(&self.backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, (mode, umask), flags) {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let done = self.with_handle(fh, |f, ino| {
            let (off, len) = (
                i64::try_from(offset).map_err(|_| Errno::EINVAL)?,
                i64::try_from(length).map_err(|_| Errno::EINVAL)?,
            );
            // SAFETY: a valid descriptor owned by the handle for this call.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(ino)
        });
        match done {
            Ok(ino) => {
                self.record_for(ino, |path| Record::Fallocate {
                    path,
                    offset,
                    len: length,
                });
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs, Errno> {
    let path = c_path(path)?;
    // SAFETY: zeroed plain-old-data, filled by the call on success.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } == 0 {
        Ok(s)
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}
