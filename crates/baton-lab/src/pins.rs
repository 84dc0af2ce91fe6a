//! The bpffs the lab's fronts pin their forwarder to (flow map, ring, stats,
//! TCX link), so that a restarted front adopts the flows its predecessor
//! handed off.
//!
//! `ip netns exec` mounts a fresh `/sys` for what it runs, so the bpffs must
//! live outside `/sys`, mounted in the root mount namespace before the
//! daemons start: [`BPFFS`]. Each lab pins under its own directory,
//! [`pin_dir`], made by `up` and removed by `down` (and a failing `up`) once
//! the daemons are gone; the last lab to go unmounts the bpffs, unless
//! something else pinned there.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{sys, LabError};

/// Where the bpffs for the lab's pins is mounted.
pub const BPFFS: &str = "/run/baton/bpffs";
/// `BPF_FS_MAGIC` from `linux/magic.h`: `statfs` of a bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
/// The prefix of every lab's directory on [`BPFFS`].
const PIN_PREFIX: &str = "lab-";

/// The directory lab `name` pins under: `/run/baton/bpffs/lab-NAME` (the
/// front adds `INTERFACE/vABI/` below it).
pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(BPFFS).join(format!("{PIN_PREFIX}{name}"))
}

/// The lab a directory on [`BPFFS`] belongs to, by its file name.
pub(crate) fn lab_of_pin_dir(file_name: &str) -> Option<&str> {
    file_name.strip_prefix(PIN_PREFIX)
}

/// Takes the lock that serialises mounting, claiming and releasing the
/// bpffs between labs: the parent directory, which is never removed.
fn lock_bpffs() -> Result<File, LabError> {
    let dir = Path::new(BPFFS);
    let parent = dir.parent().unwrap_or(dir);
    // Only the parent before the lock: the mount point itself is made and
    // removed under the lock (another lab's `release` may remove it while
    // this one waits for the lock).
    fs::create_dir_all(parent).map_err(|e| LabError::io("create", parent, e))?;
    let guard = File::open(parent).map_err(|e| LabError::io("open", parent, e))?;
    sys::lock(&guard, true).map_err(|e| LabError::io("lock", parent, e))?;
    Ok(guard)
}

/// Makes sure [`BPFFS`] is a mounted bpffs: creates the directory and
/// mounts one there unless one is (`mount -t bpf bpf /run/baton/bpffs`).
/// Idempotent; concurrent callers are serialized, so the mount is never
/// stacked (which would hide the pins made below it).
pub(crate) fn ensure_bpffs() -> Result<(), LabError> {
    let _guard = lock_bpffs()?;
    mount_if_needed()
}

/// Makes lab `name`'s pin directory (mounting the bpffs again if another
/// lab's `down` unmounted it meanwhile): while it exists, no `down`
/// unmounts the bpffs.
pub(crate) fn claim(name: &str) -> Result<(), LabError> {
    let _guard = lock_bpffs()?;
    mount_if_needed()?;
    let dir = pin_dir(name);
    fs::create_dir_all(&dir).map_err(|e| LabError::io("create", &dir, e))
}

/// Removes lab `name`'s pins and, when nothing else is on the bpffs (no
/// other lab's directory, no other front's pins: only the kernel's own
/// `maps.debug` and `progs.debug`), unmounts it: the labs mounted it.
pub(crate) fn release(name: &str) -> Result<(), LabError> {
    let _guard = lock_bpffs()?;
    remove_pins(name)?;
    let dir = Path::new(BPFFS);
    if !dir.exists() || !is_bpffs(dir)? {
        return Ok(());
    }
    let others = fs::read_dir(dir)
        .map_err(|e| LabError::io("list", dir, e))?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            n != "maps.debug" && n != "progs.debug"
        })
        .count();
    if others == 0 {
        sys::umount(dir).map_err(|e| LabError::io("umount", dir, e))?;
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

fn mount_if_needed() -> Result<(), LabError> {
    let dir = Path::new(BPFFS);
    fs::create_dir_all(dir).map_err(|e| LabError::io("create", dir, e))?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    sys::mount_bpffs(dir).map_err(|e| LabError::io("mount -t bpf bpf", dir, e))?;
    if is_bpffs(dir)? {
        Ok(())
    } else {
        Err(LabError::io(
            "mount -t bpf bpf",
            dir,
            io::Error::other("the mount succeeded but the directory is still no bpffs"),
        ))
    }
}

fn is_bpffs(dir: &Path) -> Result<bool, LabError> {
    sys::fs_magic(dir)
        .map(|m| m == BPF_FS_MAGIC)
        .map_err(|e| LabError::io("statfs", dir, e))
}

/// Removes lab `name`'s pins (unlinking a pin on a bpffs releases it; the
/// front's TCX link goes with its pin). Nothing there is not an error.
pub(crate) fn remove_pins(name: &str) -> Result<(), LabError> {
    let dir = pin_dir(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io("remove", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_are_per_lab() {
        assert_eq!(pin_dir("x1"), Path::new("/run/baton/bpffs/lab-x1"));
        assert_eq!(lab_of_pin_dir("lab-x1"), Some("x1"));
        assert_eq!(lab_of_pin_dir("eth0"), None);
    }
}
