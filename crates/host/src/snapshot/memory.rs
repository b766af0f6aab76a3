//! Memory state of snapshots: `<vm>-Snapshot<uid>.vmem` next to the snapshot's .vmsn,
//! written by [`LockedVm::create_snapshot_with_memory`] and made the VM's suspend file by
//! a revert.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmx::Snapshot;

use super::LockedVm;
use crate::error::{Error, Result};

/// The memory state of a snapshot taken by [`LockedVm::create_snapshot_with_memory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMemory {
    /// The memory file (`<vm>-Snapshot<uid>.vmem`, see [`memory_file_name`]).
    pub path: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// How long the guest was stopped (switching the disks and saving the memory).
    pub guest_paused: Duration,
    /// Saving the memory alone.
    pub save_elapsed: Duration,
}

/// The memory file that goes with the snapshot state file `vmsn_name`: the same name
/// with `.vmem` for `.vmsn` (VMware's naming), `None` for a name without `.vmsn`.
pub fn memory_file_name(vmsn_name: &str) -> Option<String> {
    vmsn_name
        .strip_suffix(".vmsn")
        .filter(|stem| !stem.is_empty())
        .map(|stem| format!("{stem}.vmem"))
}

impl LockedVm<'_> {
    /// The memory file of snapshot `uid`, when it has one.
    pub fn snapshot_memory_file(&self, uid: u64) -> Option<PathBuf> {
        self.db.get(uid).and_then(|s| self.memory_file(s))
    }

    /// The memory file of `snap` if it exists (a plain file in the VM folder).
    pub(super) fn memory_file(&self, snap: &Snapshot) -> Option<PathBuf> {
        let name = memory_file_name(&snap.filename)?;
        if vmx::validate_relative_name(&name).is_err() || name.contains('/') {
            return None;
        }
        let path = self.vm.dir.join(name);
        std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file())
            .then_some(path)
    }

    /// The VM's suspend file as the runtime reads it on resume.
    pub(super) fn suspend_path(&self) -> Result<PathBuf> {
        let rt = self.vm.runtime(self.host);
        Ok(rt.files().map_err(|e| self.rt_err(e))?.vmss)
    }

    /// The suspend file when the VM is suspended in a state a revert linked from the
    /// current snapshot's memory file (the same file, so discarding it loses nothing).
    pub(super) fn state_from_current_snapshot(&self) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let current = self.db.get(self.db.current()?)?;
        let memory = std::fs::metadata(self.memory_file(current)?).ok()?;
        let vmss = self.suspend_path().ok()?;
        let state = std::fs::symlink_metadata(&vmss).ok()?;
        let same = state.is_file() && state.dev() == memory.dev() && state.ino() == memory.ino();
        (same && self.vm.suspend_file(self.host).as_deref() == Some(vmss.as_path())).then_some(vmss)
    }
}

/// Makes `to` the same file as `from`: a hard link, or where the file system has none
/// (or `to` is on another one) a copy written as `to.partial`, synced and renamed. The
/// folder of `to` is synced.
pub(super) fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let dir = crate::fsutil::parent_dir(to);
    if std::fs::hard_link(from, to).is_err() {
        let mut name = to.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = to.with_file_name(name);
        let copied = std::fs::copy(from, &partial)
            .and_then(|_| std::fs::File::open(&partial)?.sync_all())
            .and_then(|()| std::fs::rename(&partial, to));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::io(to, "copy memory state", e));
        }
    }
    crate::fsutil::sync_dir(&dir)
}
