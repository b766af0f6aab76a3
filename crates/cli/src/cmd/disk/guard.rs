//! What disk commands need from the host, when one is set up on this machine: its
//! datastores (a descriptor in a datastore may name files anywhere in the datastores, as
//! linked clones do) and its VMs' locks (a disk inside a registered VM's folder is
//! changed only under that VM's lock, so never during a backup or snapshot operation).

use anyhow::Result;
use std::path::Path;

/// The host the disk tools work with: `vcb --root`, else `$VCB_ROOT`, else the default
/// root, when it holds a host.
pub(super) fn local_host() -> Option<host::Host> {
    host::Host::open(&crate::cmd::backup::resolve_root(None)).ok()
}

/// Open options for `disk` under the host's confinement rule when the disk lies in one
/// of its datastores, else confined to each descriptor's folder (or anywhere, when the
/// user vouches for the descriptor).
pub(super) fn open_options(disk: &Path, writable: bool, anywhere: bool) -> vmdk::OpenOptions {
    let base = vmdk::OpenOptions {
        writable,
        ..vmdk::OpenOptions::default()
    };
    if anywhere {
        return base.confined(vmdk::Confinement::Anywhere);
    }
    if let (Some(h), Ok(canon)) = (local_host(), std::fs::canonicalize(disk)) {
        let confined = h.confined();
        if confined.contains(&canon) {
            return confined.disk_options(writable);
        }
    }
    if let Some(root) = (!writable).then(|| backup_chain_root(disk)).flatten() {
        return base.confined(vmdk::Confinement::Roots(std::sync::Arc::from(vec![root])));
    }
    base
}

/// For a disk of an incremental backup (its folder's complete catalog names parent
/// backups beside it): the folder holding the chain's backups, where its parents may be
/// read from.
fn backup_chain_root(disk: &Path) -> Option<std::path::PathBuf> {
    let dir = std::fs::canonicalize(disk).ok()?.parent()?.to_path_buf();
    let catalog = backup::restore::read_catalog(&backup::dest::LocalDir::new(dir.clone())).ok()?;
    catalog
        .disks
        .iter()
        .any(|d| d.parent_backup.is_some())
        .then(|| dir.parent().map(Path::to_path_buf))
        .flatten()
}

/// Held while a command changes a disk: the lock of the registered VM whose folder holds
/// it. `parent_of` names the child being committed when `disk` is its parent (that child
/// may have it as parent; any other may not).
pub(super) struct WriteGuard {
    _lock: Option<host::FileLock>,
}

/// Takes what changing `disk` needs (see [`WriteGuard`]).
///
/// # Errors
/// The VM is busy (its lock is held), or another registered VM's chain has `disk` as a
/// parent.
pub(super) fn write_guard(disk: &Path, parent_of: Option<&Path>) -> Result<WriteGuard> {
    let Some(h) = local_host() else {
        return Ok(WriteGuard { _lock: None });
    };
    let lock = h.lock_disk(disk, host::LockMode::NoWait, parent_of)?;
    Ok(WriteGuard { _lock: lock })
}
