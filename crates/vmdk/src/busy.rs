//! Whether a disk may be changed: no other process (a running QEMU) has its files open,
//! and no redo log in its folder has it as its parent.
//!
//! QEMU takes Linux open-file-description locks (`F_OFD_SETLK`) on every image file it
//! opens, shared ones on files it only reads: a test for a conflicting write lock over
//! the whole file sees both. A parent with children is never written (design rule): a
//! child records its parent's CID, and any write would change what the child reads.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The first file of the disk at `path` (its own link: descriptor and extents) that
/// another open file description holds a lock on, if any.
///
/// # Errors
/// Errors reading the descriptor or opening its files.
pub fn locked_file(path: &Path) -> Result<Option<PathBuf>> {
    for f in crate::ops::link_files(path)? {
        if f.symlink_metadata().is_err() {
            continue;
        }
        let file = std::fs::File::open(&f).map_err(|e| Error::io(&f, "open", e))?;
        if ofd_locked(&file).map_err(|e| Error::io(&f, "test lock", e))? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// True if another open file description holds a lock on any byte of `file`.
fn ofd_locked(file: &std::fs::File) -> std::io::Result<bool> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK reads and writes the flock we pass; the descriptor is open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The descriptors in the folder of the disk at `path` whose parent is that disk.
///
/// # Errors
/// [`Error::Io`] listing the folder.
pub fn children_in_folder(path: &Path) -> Result<Vec<PathBuf>> {
    let me = std::fs::canonicalize(path).map_err(|e| Error::io(path, "resolve", e))?;
    let dir = me.parent().unwrap_or(Path::new("/")).to_path_buf();
    let own = crate::ops::link_files(&me).unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "list folder", e))? {
        let Ok(entry) = entry else { continue };
        let p = entry.path();
        let is_vmdk = p.extension().is_some_and(|e| e == "vmdk");
        if !is_vmdk || own.contains(&p) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if parent_of(&p).is_some_and(|parent| parent == me) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The canonical parent a descriptor names, if it has one that exists.
fn parent_of(descriptor: &Path) -> Option<PathBuf> {
    let (d, _) = crate::link::read_descriptor(descriptor).ok()?;
    if !d.has_parent() {
        return None;
    }
    let hint = d.parent_file_name_hint.as_deref()?;
    let dir = descriptor.parent()?;
    std::fs::canonicalize(dir.join(hint)).ok()
}

/// Refuses to `what` (a verb phrase) the disk at `path` when a running QEMU (or any
/// process locking it) has one of its files open, or when a redo log in its folder has
/// it as parent.
///
/// # Errors
/// [`Error::DiskBusy`] saying which.
pub fn refuse_busy(path: &Path, what: &str) -> Result<()> {
    if let Some(f) = locked_file(path)? {
        return Err(Error::DiskBusy {
            path: path.to_path_buf(),
            reason: format!(
                "cannot {what} it: {} is open in a running VM (QEMU holds a lock on it)",
                f.display()
            ),
        });
    }
    let kids = children_in_folder(path)?;
    if let Some(child) = kids.first() {
        return Err(Error::DiskBusy {
            path: path.to_path_buf(),
            reason: format!(
                "cannot {what} it: it is the parent of redo log {} (a parent with children is never written)",
                child.display()
            ),
        });
    }
    Ok(())
}
