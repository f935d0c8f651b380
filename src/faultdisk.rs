//! Disk faults for real processes: a small ext4 filesystem on a loop
//! device of its own, mounted where one server keeps its data, that the
//! fault-injection suite fills to the last block and then frees.
//!
//! What it does: creates a sparse image file, formats it (`mkfs.ext4`),
//! mounts it with `mount -o loop` at a directory, fills it with a filler
//! file until the kernel answers ENOSPC, and removes the filler. The
//! filesystem is unmounted (lazily, so a server still holding files does
//! not block it) and the image deleted on drop.
//!
//! What it does not do: touch any filesystem but its own image, or fake
//! the error: the servers meet the kernel's real ENOSPC. It needs root,
//! `mkfs.ext4` and loop devices; `available()` says why not.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why disk faults cannot be injected here, if they cannot.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (mounting a loop device needs root)".into());
    }
    let found = Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err("`mkfs.ext4` is not installed (apt-get install e2fsprogs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices here (/dev/loop-control is missing)".into());
    }
    // A container can have the control device and still refuse loop
    // mounts: try one.
    let probe = std::env::temp_dir().join(format!("bunker-loop-probe-{}", std::process::id()));
    let result = SmallDisk::mount(&probe.with_extension("img"), &probe, 8)
        .map(drop)
        .map_err(|e| format!("cannot mount a loop device here: {e}"));
    let _ = std::fs::remove_dir(&probe);
    result
}

fn run(args: &[&str]) -> Result<(), DiskError> {
    crate::faultnet::run_tool(args)
        .map_err(|(command, output)| DiskError::Command { command, output })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A small filesystem mounted at `mount_point`, unmounted on drop.
pub struct SmallDisk {
    image: PathBuf,
    mount_point: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Makes a `size_mib` ext4 filesystem in `image` and mounts it at
    /// `mount_point` (created if missing).
    pub fn mount(image: &Path, mount_point: &Path, size_mib: u64) -> Result<SmallDisk, DiskError> {
        let file = std::fs::File::create(image).map_err(io_err(image))?;
        file.set_len(size_mib << 20).map_err(io_err(image))?;
        drop(file);
        let image_s = image.display().to_string();
        run(&["mkfs.ext4", "-q", "-F", "-m", "0", &image_s])?;
        std::fs::create_dir_all(mount_point).map_err(io_err(mount_point))?;
        let mount_s = mount_point.display().to_string();
        run(&["mount", "-o", "loop", &image_s, &mount_s])?;
        Ok(SmallDisk {
            image: image.to_path_buf(),
            mount_point: mount_point.to_path_buf(),
            filler: mount_point.join("FILLER"),
        })
    }

    /// Writes a filler file until the filesystem is full; returns the
    /// bytes written. Bounded by the filesystem's size.
    pub fn fill(&self) -> Result<u64, DiskError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .map_err(io_err(&self.filler))?;
        let chunk = vec![0xF1u8; 1 << 16];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(io_err(&self.filler)(e)),
            }
        }
        // Whatever the page cache held is now on disk, so the space is
        // really gone (delayed allocation would otherwise hide some).
        let _ = f.sync_all();
        // Fill the last blocks freed by the sync's metadata settling.
        let _ = f.write(&chunk[..4096]);
        Ok(written)
    }

    /// Removes the filler: the space is back.
    pub fn free(&self) -> Result<(), DiskError> {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.filler)(e)),
        }
    }

    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(&["umount", "-l", &self.mount_point.display().to_string()]);
        let _ = std::fs::remove_file(&self.image);
    }
}
