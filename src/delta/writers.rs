//! Which files of the working copy the application can change without a
//! change notification: files its processes hold open for writing, and
//! files they map shared and writable.
//!
//! Why: inotify reports `write(2)`-style I/O and every close of a file
//! opened for writing, but not stores through a shared writable memory
//! map. A dirty mapped page is, however, visible to any read of the file
//! (it is the page cache), so hashing such a file at a capture finds every
//! byte the application stored through its mapping so far. The rule that
//! makes this complete: at every capture, hash each file that some process
//! of the application held open for writing, or mapped shared and
//! writable, at the previous capture or at this one. A file mapped *and*
//! unmapped between two captures needed a descriptor opened for writing
//! (`PROT_WRITE` with `MAP_SHARED` requires one); if that descriptor was
//! closed, its close was an `IN_CLOSE_WRITE` event; if it is still open,
//! the file is in this capture's set.
//!
//! Which processes: every descendant of this process (`/proc/PID/task/
//! TID/children`, or the parent links of `/proc/*/stat` where the kernel
//! lacks that file). The server makes itself a child subreaper
//! (`become_subreaper`) so that a process that daemonizes stays a
//! descendant; `reap_orphans` collects those that exit.
//!
//! What it does not do: see processes that are not descendants (another
//! user's shell writing into the directory breaks the application contract,
//! docs/APPLICATIONS.md), or read a file. Where it cannot tell (no `/proc`,
//! a process whose descriptors or maps cannot be read), it says so with
//! [`TreeError::Untrackable`], and the command must fail.
//!
//! Invariant: after a successful [`Writers::take`], `previous` holds exactly
//! the files found at that scan.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::tree::TreeError;

/// Processes examined per scan, at most (a fork bomb must not stall the
/// server: past it, the scan cannot tell and says so).
const PROCESSES_MAX: usize = 4096;
/// Descriptors examined per process, at most (same reason).
const FDS_PER_PROCESS_MAX: usize = 65_536;

static SUBREAPER: AtomicBool = AtomicBool::new(false);

/// Processes the application adapters started and have not reaped yet
/// (`register_root`): with the orphans re-parented to this process, the
/// roots of every process of the application.
static ROOTS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// An adapter started the application's process `pid`.
pub fn register_root(pid: u32) {
    ROOTS.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
}

/// The adapter reaped `pid` (it exited or was killed).
pub fn forget_root(pid: u32) {
    ROOTS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

/// Makes this process the child subreaper of its descendants (Linux 3.4+):
/// an orphaned descendant is re-parented here instead of to init, so the
/// scan still sees it. Call once at server start.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments and
    // touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    SUBREAPER.store(true, Ordering::Relaxed);
    Ok(())
}

/// Collects descendants re-parented to this subreaper that have exited
/// (zombies), except `keep` (children whose owner waits for them). Does
/// nothing unless [`become_subreaper`] was called: in a process that is
/// not a subreaper every zombie child has an owner that will wait for it.
/// Only the thread that spawns and waits for the `keep` children may call
/// this, so that none of them is reaped behind its owner's back.
pub fn reap_orphans(keep: &[u32]) {
    if !SUBREAPER.load(Ordering::Relaxed) {
        return;
    }
    // Orphans are re-parented to the main thread (the first live thread of
    // the subreaper): only its children can be orphans.
    let me = std::process::id();
    let Ok(children) = main_thread_children(me).or_else(|_| children_of(me)) else {
        return;
    };
    for pid in children {
        if keep.contains(&pid) || !is_zombie(pid) {
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with WNOHANG writes only into
        // `status`, a valid i32.
        unsafe {
            libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_some_and(|(state, _)| state == b'Z')
}

/// The state letter and the parent pid from `/proc/PID/stat` (the command
/// name, in parentheses, may itself hold spaces and parentheses).
fn parse_stat(stat: &[u8]) -> Option<(u8, u32)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The files under one directory that descendants can write unnoticed.
pub struct Writers {
    /// The watched directory, canonical (`/proc` shows resolved paths).
    root: PathBuf,
    previous: BTreeSet<String>,
}

impl Writers {
    pub fn new(root: &Path) -> Result<Writers, TreeError> {
        let root =
            fs::canonicalize(root).map_err(|e| TreeError::io(&root.display().to_string(), e))?;
        Ok(Writers {
            root,
            previous: BTreeSet::new(),
        })
    }

    /// The files (relative to the root) to hash at this capture: those
    /// found now and those found at the previous successful scan.
    pub fn take(&mut self) -> Result<BTreeSet<String>, TreeError> {
        let now = self.scan().map_err(TreeError::Untrackable)?;
        let mut all = std::mem::replace(&mut self.previous, now);
        all.extend(self.previous.iter().cloned());
        Ok(all)
    }

    fn scan(&self) -> Result<BTreeSet<String>, String> {
        let mut found = BTreeSet::new();
        for pid in descendants()? {
            match self.scan_process(pid, &mut found) {
                Ok(()) => {}
                // It exited meanwhile: its descriptors were closed (each
                // close for writing is an event) and its dirty mapped
                // pages are in the page cache of files the previous scan
                // named or that a close event named.
                Err(e) if gone(&e) => {}
                Err(e) => {
                    return Err(format!(
                        "cannot tell which files process {pid} of the application can write \
                         without a notification: {e}"
                    ))
                }
            }
        }
        Ok(found)
    }

    fn scan_process(&self, pid: u32, found: &mut BTreeSet<String>) -> io::Result<()> {
        self.scan_maps(pid, found)?;
        self.scan_fds(pid, found)
    }

    /// Shared, writable file mappings (`rw-s`, `-w-s`).
    fn scan_maps(&self, pid: u32, found: &mut BTreeSet<String>) -> io::Result<()> {
        let maps = fs::read(format!("/proc/{pid}/maps"))?;
        for line in maps.split(|&b| b == b'\n') {
            if let Some(path) = shared_writable_path(line) {
                self.note(Path::new(std::ffi::OsStr::from_bytes(path)), found);
            }
        }
        Ok(())
    }

    /// Descriptors open for writing (`O_WRONLY` or `O_RDWR`).
    fn scan_fds(&self, pid: u32, found: &mut BTreeSet<String>) -> io::Result<()> {
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        for (count, entry) in fs::read_dir(&dir)?.enumerate() {
            if count >= FDS_PER_PROCESS_MAX {
                return Err(io::Error::other(format!(
                    "more than {FDS_PER_PROCESS_MAX} open descriptors"
                )));
            }
            let entry = entry?;
            let target = match fs::read_link(entry.path()) {
                Ok(target) => target,
                // Closed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !target.starts_with(&self.root) {
                continue;
            }
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let info = match fs::read(info) {
                Ok(info) => info,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let flags = fdinfo_flags(&info).ok_or_else(|| {
                io::Error::other(format!("no flags in the fdinfo of {}", target.display()))
            })?;
            if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
                self.note(&target, found);
            }
        }
        Ok(())
    }

    /// Records `path` if it is a file under the root.
    fn note(&self, path: &Path, found: &mut BTreeSet<String>) {
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return;
        };
        // A path the engine could not name (non-UTF-8) is refused by the
        // capture itself when it meets the file; a deleted file's removal
        // was an event.
        if let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) {
            if !rel.ends_with(" (deleted)") {
                found.insert(rel.to_string());
            }
        }
    }
}

/// The path of a line of `/proc/PID/maps` if the mapping is a shared,
/// writable mapping of a file: `start-end perms offset dev inode path`.
fn shared_writable_path(line: &[u8]) -> Option<&[u8]> {
    let mut rest = line;
    let mut fields = [&b""[..]; 5];
    for field in &mut fields {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let perms = fields[1];
    let writable_shared = perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b's');
    let start = rest.iter().position(|&b| b != b' ')?;
    let path = &rest[start..];
    (writable_shared && path.first() == Some(&b'/')).then_some(path)
}

/// The `flags:` field (octal) of a `/proc/PID/fdinfo/N` file.
fn fdinfo_flags(info: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(info).ok()?;
    let line = text.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

fn gone(e: &io::Error) -> bool {
    // ESRCH: the process is exiting (its /proc entry remains briefly).
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Every process of the application: the processes the adapters started
/// (`register_root`), the orphans re-parented to this process (children of
/// its main thread, where the kernel puts them), and all their
/// descendants. Cheaper than every child of every thread of the server
/// (tens of threads), which is the same set.
fn descendants() -> Result<Vec<u32>, String> {
    let me = std::process::id();
    let mut out = Vec::new();
    let mut stack = match main_thread_children(me) {
        Ok(children) => children,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return descendants_by_stat(me),
        Err(e) => return Err(format!("listing the children of this process: {e}")),
    };
    stack.extend(
        ROOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied(),
    );
    stack.sort_unstable();
    stack.dedup();
    while let Some(pid) = stack.pop() {
        if out.contains(&pid) {
            continue;
        }
        if out.len() >= PROCESSES_MAX {
            return Err(format!(
                "the application has more than {PROCESSES_MAX} processes"
            ));
        }
        out.push(pid);
        match children_of(pid) {
            Ok(children) => stack.extend(children),
            Err(e) if gone(&e) => {}
            Err(e) => return Err(format!("listing the children of process {pid}: {e}")),
        }
    }
    Ok(out)
}

/// The children of the main thread of `pid` (`CONFIG_PROC_CHILDREN`).
fn main_thread_children(pid: u32) -> io::Result<Vec<u32>> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(text
        .split_ascii_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .collect())
}

/// The children of every thread of `pid` (`CONFIG_PROC_CHILDREN`).
fn children_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let path = task.path().join("children");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // The thread ended meanwhile.
            Err(e) if gone(&e) && !task.path().exists() => continue,
            // `NotFound` with the thread still there: the kernel has no
            // `children` files (the caller falls back to parent links).
            Err(e) => return Err(e),
        };
        out.extend(
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Ok(out)
}

/// Descendants of `root` from the parent links of every process, for
/// kernels without `/proc/PID/task/TID/children`.
fn descendants_by_stat(root: u32) -> Result<Vec<u32>, String> {
    let mut parent_of = Vec::new();
    let entries = fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((_, ppid)) = fs::read(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, _) in parent_of.iter().filter(|(_, pp)| *pp == parent) {
            if out.len() >= PROCESSES_MAX {
                return Err(format!(
                    "the application has more than {PROCESSES_MAX} processes"
                ));
            }
            out.push(pid);
            frontier.push(pid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_are_parsed() {
        let shared = b"7f00-7f10 rw-s 00000000 08:01 1234                       /data/live/db.mdb";
        assert_eq!(
            shared_writable_path(shared),
            Some(&b"/data/live/db.mdb"[..])
        );
        let spaced = b"7f00-7f10 rw-s 00000000 08:01 1234   /data/live/a b (1)";
        assert_eq!(
            shared_writable_path(spaced),
            Some(&b"/data/live/a b (1)"[..])
        );
        let private = b"7f00-7f10 rw-p 00000000 08:01 1234   /data/live/db.mdb";
        assert_eq!(shared_writable_path(private), None);
        let read_only = b"7f00-7f10 r--s 00000000 08:01 1234   /data/live/db.mdb";
        assert_eq!(shared_writable_path(read_only), None);
        let anonymous = b"7f00-7f10 rw-s 00000000 00:01 99";
        assert_eq!(shared_writable_path(anonymous), None);
        let special = b"7ffd-7ffe rw-p 00000000 00:00 0   [stack]";
        assert_eq!(shared_writable_path(special), None);
        assert_eq!(shared_writable_path(b""), None);
        assert_eq!(shared_writable_path(b"garbage"), None);
    }

    #[test]
    fn fdinfo_and_stat_are_parsed() {
        assert_eq!(
            fdinfo_flags(b"pos:\t0\nflags:\t0100002\nmnt_id:\t29\n"),
            Some(0o100002)
        );
        assert_eq!(fdinfo_flags(b"pos:\t0\n"), None);
        assert_eq!(parse_stat(b"42 (a) b) c) S 7 42 42"), Some((b'S', 7)));
        assert_eq!(parse_stat(b"42 (x) Z 1"), Some((b'Z', 1)));
        assert_eq!(parse_stat(b"42 x"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(line in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = shared_writable_path(&line);
            let _ = fdinfo_flags(&line);
            let _ = parse_stat(&line);
        }
    }
}
