//! The host lock as a value ([`HostLock`]), and the journals of multi-file swaps that
//! run under it (restores), recovered by the next holder.
//!
//! Changes to `host.toml` and `inventory.toml` take the host lock for their own
//! duration. A caller that must keep the inventory stable across a longer plan-and-apply
//! (a restore decides what it replaces and registers the VM under one lock) takes
//! [`Host::lock_host`] and passes the [`HostLock`] to the `*_locked` methods, which
//! then do not take it again (flock is per open file: a second open would wait for the
//! first forever).
//!
//! Swaps of VM files that span folders (a restore over an existing VM) are journaled in
//! the root as `.vcb-swap-<id>.json`, with a staging record `.vcb-stage-<id>.json`
//! written before the new files are staged ([`Host::swap_journal`]); every
//! [`Host::lock_host`] first finishes or undoes the swaps a killed process left and
//! removes what it was staging, accepting only paths inside the host's datastores.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lock::{FileLock, LockMode, LOCK_FILE_NAME};
use crate::Host;

/// Prefix of a host-level swap journal in the root.
const SWAP_PREFIX: &str = ".vcb-swap-";
/// Prefix of a staging record (files being staged for a swap) in the root.
const STAGE_PREFIX: &str = ".vcb-stage-";

/// The host lock, held until dropped.
#[derive(Debug)]
pub struct HostLock {
    lock: FileLock,
}

impl HostLock {
    /// True if this lock is the one of `host`.
    pub(crate) fn is_of(&self, host: &Host) -> bool {
        self.lock.path() == host.root().join(LOCK_FILE_NAME)
    }
}

impl Host {
    /// Takes the host lock and finishes any swap an interrupted process left.
    ///
    /// # Errors
    /// [`Error::Busy`] with [`LockMode::NoWait`]; a swap journal that cannot be
    /// recovered (named in the error).
    pub fn lock_host(&self, mode: LockMode) -> Result<HostLock> {
        let lock = FileLock::acquire(&self.root().join(LOCK_FILE_NAME), mode)?;
        self.recover_swaps()?;
        fsio::remove_stale_temps(self.root())?;
        Ok(HostLock { lock })
    }

    /// Fresh paths for a multi-file swap run under `lock`: its journal and its staging
    /// record (see [`fsio::swap`]).
    ///
    /// # Errors
    /// When `lock` is not this host's lock.
    pub fn swap_journal(&self, lock: &HostLock) -> Result<(PathBuf, PathBuf)> {
        self.check_lock(lock)?;
        let id = format!("{}-{:08x}.json", std::process::id(), rand::random::<u32>());
        Ok((
            self.root().join(format!("{SWAP_PREFIX}{id}")),
            self.root().join(format!("{STAGE_PREFIX}{id}")),
        ))
    }

    /// Errors unless `lock` is this host's lock.
    pub(crate) fn check_lock(&self, lock: &HostLock) -> Result<()> {
        if lock.is_of(self) {
            Ok(())
        } else {
            Err(Error::bad_file(
                lock.lock.path(),
                "the host lock given is another host's",
            ))
        }
    }

    /// Recovers the swap journals in the root (the host lock is held).
    fn recover_swaps(&self) -> Result<()> {
        let journals = swap_journals(self.root(), SWAP_PREFIX)?;
        let records = swap_journals(self.root(), STAGE_PREFIX)?;
        if journals.is_empty() && records.is_empty() {
            return Ok(());
        }
        let confined = self.confined();
        let accept = |p: &Path| confined.contains(&crate::confine::resolve_existing(p));
        for j in journals {
            let outcome = fsio::swap::recover(&j, &accept)?;
            tracing::info!("{}: interrupted swap {outcome:?}", j.display());
        }
        // After the swaps: what a committed swap moved in no longer carries a staged name.
        for r in records {
            let removed = fsio::swap::recover_staging(&r, &accept)?;
            tracing::info!("{}: removed {removed} staged files", r.display());
        }
        Ok(())
    }

    /// Recovers left swaps if the host lock is free right now (opening a host must not
    /// wait for, or disturb, another process's restore).
    pub(crate) fn recover_swaps_if_idle(&self) {
        let pending = [SWAP_PREFIX, STAGE_PREFIX]
            .iter()
            .any(|p| swap_journals(self.root(), p).is_ok_and(|j| !j.is_empty()));
        if !pending {
            return;
        }
        if let Ok(lock) = FileLock::acquire(&self.root().join(LOCK_FILE_NAME), LockMode::NoWait) {
            if let Err(e) = self.recover_swaps() {
                tracing::warn!("{e}");
            }
            drop(lock);
        }
    }
}

fn swap_journals(root: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, "list folder", e))? {
        let entry = entry.map_err(|e| Error::io(root, "list folder", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".json") {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
