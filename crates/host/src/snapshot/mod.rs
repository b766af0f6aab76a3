//! Snapshots: redo logs, the .vmsd snapshot tree, revert, remove and consolidate.
//!
//! ## Model
//! A VM's disk files form a tree per disk: a base disk, redo logs (`NAME-000001.vmdk`
//! with a COWD extent `NAME-000001-delta.vmdk`) each naming its parent. Two kinds of
//! reference point into the tree:
//! - the .vmx: each disk node names the link the VM writes (the "you are here" state);
//! - the .vmsd: each snapshot names, per node, the link *as it was when the snapshot was
//!   taken*. Taking the snapshot made that link the parent of a new redo log, so it is
//!   never written again while the snapshot exists.
//!
//! A file is *pinned* while a reference names it. Every operation first changes the
//! references, then runs the same clean-up (`compact`) until nothing changes:
//! - an unpinned redo log with no children holds a state nobody needs: it is deleted;
//! - an unpinned file F with exactly one child C, where C has at most one child X, is
//!   merged: C's data is committed into F (`vmdk::commit`; F keeps its CID, so C and X
//!   stay valid at every step), X is re-pointed at F, C is deleted, and every reference to
//!   C now names F. F held no state anyone needs (it is unpinned) and only C read it.
//!
//! So removing snapshot S (named link F) merges the redo log taken at S into F when F has
//! no other child; when it has (a revert made a branch), F stays as the shared parent and
//! nothing is written. Every remaining snapshot and the current state read exactly what
//! they read before, and a parent disk with children is never written.
//!
//! ## Running VMs
//! While QEMU runs the VM (see [`crate::Vm::runtime`]), creating a snapshot switches the
//! running disks onto the new redo logs over QMP, and a merge whose child is the file
//! QEMU writes is a live commit (QEMU copies it into its parent while the guest
//! writes, then pivots). A merge of a link QEMU reads as a backing file is deferred:
//! the chain stays as it is (its data is right) and the next `consolidate` after
//! power-off merges it. No file in a running chain is ever written or deleted by vcb.
//! Reverting a running VM is refused: power it off first.
//!
//! ## Memory
//! [`LockedVm::create_snapshot_with_memory`] also saves a running VM's memory and device
//! state at the switch, to `<vm>-Snapshot<uid>.vmem` ([`memory_file_name`] of the
//! `.vmsn`). Reverting to such a snapshot links that file as the VM's `.vmss` after the
//! disks are reverted, so the VM comes back suspended in the snapshot's state; removing
//! the snapshot deletes the file, and `consolidate` deletes memory files no snapshot
//! names.
//!
//! ## Crash safety
//! Every step holds the VM folder lock. Creating: new redo logs, then the .vmx, then the
//! .vmsd, so a crash leaves either unreferenced redo logs (deleted by consolidate) or a
//! .vmx deeper than the .vmsd explains (committed by consolidate). A merge first writes a
//! journal (`.vcb-journal`) naming child, parent and the re-pointed link; the next lock
//! holder finishes it (commit is repeatable) before doing anything else. A live commit
//! is journaled the same way (op `live-commit`, with the disk node): if QEMU's chain no
//! longer holds the child only the bookkeeping is left, else the commit runs again.
//! With a running VM, the .vmx is set to QEMU's active tops before the tree is built.

mod compact;
mod graph;
mod live;
mod memory;
mod ops;
mod power;
mod quiesce;
mod tracking;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vmx::{DiskNode, SnapshotDb};

use crate::error::{Error, Result};
use crate::fsutil::{read_text_opt, write_atomic};
use crate::lock::{FileLock, LockMode};
use crate::vm::{read_vmx, Vm, VmRef};
use crate::Host;

pub use compact::{Cleanup, JOURNAL_FILE};

/// Display name of the snapshot a consolidated backup takes. One still recorded when no
/// backup holds the VM lock was left by a backup that died; `consolidate` removes it.
pub const BACKUP_SNAPSHOT_NAME: &str = "_vcb-backup_";
pub use memory::{memory_file_name, SnapshotMemory};
pub use ops::{SnapshotCreated, SnapshotDisk};
pub use quiesce::FREEZE_MARKER;
pub use tracking::DiskChanges;

/// A VM whose folder lock this process holds, with its .vmx and .vmsd read under the
/// lock. Snapshot operations live here; the lock is released when it is dropped.
#[derive(Debug)]
pub struct LockedVm<'h> {
    host: &'h Host,
    vm: Vm,
    db: SnapshotDb,
    /// The host's confinement rule, read when the lock was taken.
    confined: crate::Confined,
    /// Every disk a reference named since the lock was taken: the tree is built from
    /// these too, so that what an operation stops referencing is cleaned up by it rather
    /// than taken for a leftover of an interrupted run.
    seen: BTreeSet<PathBuf>,
    /// An interrupted offline merge involves files the running VM has open: it is
    /// finished after power-off, and snapshot changes wait for it.
    pending_offline_merge: bool,
    /// Taking the lock thawed a guest a killed process had left frozen.
    thawed_leftover: bool,
    _lock: FileLock,
}

impl Host {
    /// Locks the VM's folder, re-reads its .vmx and .vmsd, and finishes any merge an
    /// interrupted process left in its journal. For a running VM the .vmx is first set
    /// to the files QEMU writes (a process may have died between switching the disks
    /// and writing the .vmx), and an interrupted live commit is run again or finished.
    ///
    /// # Errors
    /// [`Error::Busy`] (with [`LockMode::NoWait`]), [`Error::NotRegistered`], and errors
    /// reading the .vmx, .vmsd or journal.
    pub fn lock_vm(&self, moref: VmRef, mode: LockMode) -> Result<LockedVm<'_>> {
        let vm = self.vm(moref)?;
        let lock = vm.lock(mode)?;
        // Re-read under the lock: another process may have changed the .vmx meanwhile.
        let vm = self.vm(moref)?;
        let db = read_vmsd(&vm.vmsd_path())?;
        let mut locked = LockedVm {
            host: self,
            vm,
            db,
            confined: self.confined(),
            seen: BTreeSet::new(),
            pending_offline_merge: false,
            thawed_leftover: false,
            _lock: lock,
        };
        // Every name the .vmx and .vmsd hold must pass the confinement rule before
        // anything acts on them.
        locked.references()?;
        // Atomic writes a killed process left half done (.vmx, .vmsd, journal).
        fsio::remove_stale_temps(&locked.vm.dir)?;
        // A guest a killed backup left frozen is thawed before anything else.
        if let Err(e) = locked.thaw_leftover() {
            tracing::warn!("{e}");
        }
        locked.recover()?;
        Ok(locked)
    }
}

impl LockedVm<'_> {
    /// Gives up the view and keeps only the lock (for callers that change the VM's
    /// files themselves, such as disk tools).
    pub fn into_lock(self) -> FileLock {
        self._lock
    }

    /// The host the VM is registered on.
    pub fn host(&self) -> &Host {
        self.host
    }

    /// The VM as read under the lock.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The snapshot tree.
    pub fn snapshots(&self) -> &SnapshotDb {
        &self.db
    }

    /// The uid of the snapshot called `name`, or with uid `name`.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`], [`Error::AmbiguousSnapshot`].
    pub fn find_snapshot(&self, name: &str) -> Result<u64> {
        let named: Vec<u64> = self
            .db
            .snapshots()
            .iter()
            .filter(|s| s.display_name == name)
            .map(|s| s.uid)
            .collect();
        match named.as_slice() {
            [uid] => Ok(*uid),
            [] => name
                .parse::<u64>()
                .ok()
                .filter(|uid| self.db.get(*uid).is_some())
                .ok_or_else(|| Error::UnknownSnapshot {
                    vm: self.vm.name(),
                    name: name.to_owned(),
                }),
            many => Err(Error::AmbiguousSnapshot {
                vm: self.vm.name(),
                name: name.to_owned(),
                count: many.len(),
            }),
        }
    }

    /// Each disk's chain as the .vmx names it: node and links, top first (canonical).
    ///
    /// # Errors
    /// As for [`Vm::disks`]; [`Error::Disk`] when a chain does not open.
    pub fn chains(&self) -> Result<Vec<(DiskNode, Vec<PathBuf>)>> {
        self.vm
            .disks(self.host)?
            .into_iter()
            .map(|d| Ok((d.node, graph::open_chain(&self.confined, &d.path)?)))
            .collect()
    }

    /// Every disk file of the VM: each link of every chain the .vmx and .vmsd name, and
    /// leftover redo logs whose chains lead into them (canonical paths).
    ///
    /// # Errors
    /// As for [`LockedVm::chains`].
    pub fn disk_files(&mut self) -> Result<Vec<PathBuf>> {
        let (_, g) = self.graph()?;
        Ok(g.files().cloned().collect())
    }

    /// The pinned files (named by a reference now) and the disk tree, built from them and
    /// from every disk referenced since the lock was taken.
    fn graph(&mut self) -> Result<(BTreeSet<PathBuf>, graph::DiskGraph)> {
        let pinned: BTreeSet<PathBuf> = self.references()?.into_iter().map(|(_, _, p)| p).collect();
        self.seen.extend(pinned.iter().cloned());
        let roots: Vec<PathBuf> = self
            .seen
            .iter()
            .filter(|p| pinned.contains(*p) || p.exists())
            .cloned()
            .collect();
        let g = graph::DiskGraph::build(&self.confined, &self.vm.dir, &roots)?;
        Ok((pinned, g))
    }

    /// Options that open this VM's disk chains under the host's confinement rule.
    pub fn disk_options(&self, writable: bool) -> vmdk::OpenOptions {
        self.confined.disk_options(writable)
    }

    /// Every file any reference names: (owner, node, canonical path). Owner `None` is
    /// the .vmx, `Some(uid)` a snapshot.
    fn references(&self) -> Result<Vec<(Option<u64>, DiskNode, PathBuf)>> {
        references(self.host, &self.vm, &self.db)
    }

    /// Writes the .vmx atomically.
    fn save_vmx(&mut self) -> Result<()> {
        write_atomic(&self.vm.vmx_path, self.vm.config.to_string().as_bytes())
    }

    /// Writes the .vmsd atomically.
    fn save_vmsd(&mut self) -> Result<()> {
        let path = self.vm.vmsd_path();
        let dict = self.db.to_dict().map_err(|e| Error::vmx(&path, e))?;
        write_atomic(&path, dict.to_string().as_bytes())
    }

    /// Makes every reference to `from` name `to` instead, in the .vmx and the .vmsd.
    fn rename_references(&mut self, from: &Path, to: &Path) -> Result<()> {
        let name = self.vm.ref_name(self.host, to);
        let mut nodes: Vec<DiskNode> = Vec::new();
        for d in self.vm.config.disks() {
            // The file may be gone already (a finished commit deletes it).
            if self.vm.resolve_name(self.host, &d.file_name)? == from {
                nodes.push(d.node);
            }
        }
        if !nodes.is_empty() {
            for node in nodes {
                self.vm
                    .config
                    .set_disk_file(node, &name)
                    .map_err(|e| Error::vmx(&self.vm.vmx_path, e))?;
            }
            self.save_vmx()?;
        }
        let mut disks: Vec<(u64, DiskNode)> = Vec::new();
        for s in self.db.snapshots() {
            for (node, file) in &s.disks {
                if self.vm.resolve_name(self.host, file)? == from
                    && !disks.contains(&(s.uid, *node))
                {
                    disks.push((s.uid, *node));
                }
            }
        }
        if disks.is_empty() {
            return Ok(());
        }
        // Edit a copy: the database in memory stays what is on disk if the write fails.
        let mut db = self.db.clone();
        let vmsd = self.vm.vmsd_path();
        for (uid, node) in disks {
            db.set_disk_file(uid, node, &name)
                .map_err(|e| Error::vmx(&vmsd, e))?;
        }
        let old = std::mem::replace(&mut self.db, db);
        self.save_vmsd().inspect_err(|_| self.db = old)
    }

    /// Re-reads the .vmx (after a failed step, to drop in-memory edits).
    fn reload_vmx(&mut self) -> Result<()> {
        self.vm.config = read_vmx(&self.vm.vmx_path)?;
        Ok(())
    }
}

/// Every file the .vmx and .vmsd name: (owner, node, path). Owner `None` is the .vmx,
/// `Some(uid)` a snapshot.
fn references(
    host: &Host,
    vm: &Vm,
    db: &SnapshotDb,
) -> Result<Vec<(Option<u64>, DiskNode, PathBuf)>> {
    let mut refs = Vec::new();
    for d in vm.config.disks() {
        refs.push((None, d.node, vm.resolve_name(host, &d.file_name)?));
    }
    for s in db.snapshots() {
        for (node, name) in &s.disks {
            refs.push((Some(s.uid), *node, vm.resolve_name(host, name)?));
        }
    }
    Ok(refs)
}

impl Vm {
    /// Each disk's chain, top first, read without the VM lock (a concurrent change may
    /// make it fail; retry or lock with [`Host::lock_vm`] for a stable view).
    ///
    /// # Errors
    /// As for [`Vm::disks`] and [`read_vmsd`]; [`Error::Disk`] when a chain does not open.
    pub fn disk_chains(&self, host: &Host) -> Result<Vec<(DiskNode, Vec<PathBuf>)>> {
        let confined = host.confined();
        self.disks(host)?
            .into_iter()
            .map(|d| Ok((d.node, graph::open_chain(&confined, &d.path)?)))
            .collect()
    }
}

impl Vm {
    /// The files this VM owns, as far as they can be read: the .vmx, .vmsd, NVRAM,
    /// suspend state, and each link of every disk chain its .vmx and .vmsd name (a
    /// linked clone owns its shared base too). Best effort: a name that does not
    /// resolve or a chain that does not open is skipped; callers treat the VM's folder
    /// as owned anyway.
    pub fn owned_files(&self, host: &Host) -> Vec<PathBuf> {
        let mut out: BTreeSet<PathBuf> = BTreeSet::new();
        out.insert(self.vmx_path.clone());
        out.insert(self.vmsd_path());
        out.extend(self.config_files(host).unwrap_or_default());
        out.extend(self.suspend_file(host));
        for chain in self.all_chains(host) {
            for link in chain {
                out.extend(vmdk::link_files(&link).unwrap_or_default());
                let tracking = vmdk::ctk::ctk_path(&link);
                if tracking.exists() {
                    out.insert(tracking);
                }
                out.insert(link);
            }
        }
        out.into_iter().collect()
    }

    /// The chain (top first, canonical) of every disk the .vmx and .vmsd name, as far as
    /// they open (a chain that does not open is its named file alone).
    pub fn all_chains(&self, host: &Host) -> Vec<Vec<PathBuf>> {
        let confined = host.confined();
        let db = read_vmsd(&self.vmsd_path()).unwrap_or_default();
        references(host, self, &db)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, _, path)| graph::open_chain(&confined, &path).unwrap_or_else(|_| vec![path]))
            .collect()
    }
}

/// Reads a .vmsd; a missing file is an empty database.
///
/// # Errors
/// [`Error::Vmx`] for a malformed file or an inconsistent tree (cycle, unknown parent,
/// duplicate uid...).
pub fn read_vmsd(path: &Path) -> Result<SnapshotDb> {
    let max = u64::try_from(vmx::MAX_INPUT_BYTES).unwrap_or(u64::MAX);
    let Some(text) = read_text_opt(path, max)? else {
        return Ok(SnapshotDb::new());
    };
    let dict = vmx::Dict::parse(&text).map_err(|e| Error::vmx(path, e))?;
    SnapshotDb::from_dict(&dict).map_err(|e| Error::vmx(path, e))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
