//! The working copy served through FUSE: the application runs in a
//! directory that Bunker serves, and every change it makes is recorded
//! with its byte ranges, so that a capture can cost the bytes changed
//! instead of the size of the changed files.
//!
//! What it does: [`RecordingMount::mount`] serves a backing directory at a
//! mount point (the `fuser` crate, mounted directly as root; one thread
//! serves requests in order) and records every write, truncation,
//! fallocate, create, mkdir, symlink, link, unlink, rmdir, rename and
//! chmod ([`record`]); [`RecordingMount::take`] makes the kernel write
//! back the dirty pages of the files open for writing (so that stores
//! through a shared mapping are recorded), then hands over what was
//! recorded since the previous take; [`record::coalesce`] folds it into
//! per-file byte ranges.
//!
//! What it does not do (yet): feed the delta engine's capture (the engine
//! still compares the files inotify names), keep speculative writes in an
//! overlay apart from the committed state, or invalidate the kernel's caches
//! when the backing directory changes behind the mount.
//!
//! Invariants: see [`fs`] and [`record`]; a mount is unmounted when its
//! [`RecordingMount`] is dropped.

pub mod fs;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use record::{coalesce, Coalesced, Record, Recorder, Taken};

/// Why the working copy cannot be served through FUSE here.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The machine cannot mount FUSE (no `/dev/fuse`, not root): the
    /// inotify backend is the one to use.
    #[error("FUSE is not available on this machine: {0}")]
    Unavailable(String),
    #[error("mounting {mountpoint} failed: {source}")]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// Whether this process can serve a FUSE mount, and if not, why.
pub fn available() -> Result<(), FuseError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(FuseError::Unavailable("no /dev/fuse".into()));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(FuseError::Unavailable(
            "not root (Bunker mounts without fusermount3)".into(),
        ));
    }
    Ok(())
}

/// A backing directory served at a mount point, recording changes.
pub struct RecordingMount {
    recorder: Arc<Recorder>,
    table: Arc<std::sync::Mutex<fs::Table>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl RecordingMount {
    /// Serves `backing` at `mountpoint` (an existing, empty directory).
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<RecordingMount, FuseError> {
        available()?;
        let recorder = Arc::new(Recorder::new());
        let fs = fs::RecordingFs::new(backing.to_path_buf(), Arc::clone(&recorder));
        let table = fs.table_handle();
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("bunker".into()),
            fuser::MountOption::Subtype("bunker".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        // The application may run as another user than the server.
        config.acl = fuser::SessionACL::All;
        let session =
            fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| FuseError::Mount {
                mountpoint: mountpoint.to_path_buf(),
                source,
            })?;
        Ok(RecordingMount {
            recorder,
            table,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What the application changed since the previous take. First makes
    /// the kernel write back every dirty page of the files open for
    /// writing through the mount (stores through a shared mapping reach a
    /// FUSE filesystem only then): an `fsync` through the mount returns
    /// once the pages were written and this filesystem answered those
    /// writes, so they are recorded. The application must be quiescent.
    pub fn take(&self) -> std::io::Result<Taken> {
        let paths = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writable_paths();
        for path in paths {
            match std::fs::File::open(self.mountpoint.join(&path)) {
                Ok(file) => file.sync_all()?,
                // Removed or replaced since: nothing of it to write back
                // under that name.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.recorder.take())
    }

    /// Unmounts and waits for the serving thread to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for RecordingMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = session.umount_and_join() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting the working copy failed");
            }
        }
    }
}
