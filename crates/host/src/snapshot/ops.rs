//! The snapshot operations: create, revert, remove, remove all, consolidate.

use std::path::{Path, PathBuf};

use vmx::{DiskNode, Snapshot};

use super::compact::Cleanup;
use super::graph::next_redo_path;
use super::memory::{link_or_copy, memory_file_name, SnapshotMemory};
use super::LockedVm;
use crate::error::{Error, Result};
use crate::fsutil::{now_micros, remove_file_if_exists, write_atomic};
use crate::vm::{PowerState, VmDiskFile};

/// Disks a snapshot leaves out, with the reason.
type Skipped = Vec<(DiskNode, String)>;

/// One disk of a new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// Where the disk is attached.
    pub node: DiskNode,
    /// The link the snapshot preserves, read-only from now on: what a backup exports.
    pub base: PathBuf,
    /// The new redo log the VM now writes.
    pub redo: PathBuf,
}

/// What [`LockedVm::create_snapshot`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotCreated {
    /// The new snapshot's uid.
    pub uid: u64,
    /// The disks it covers.
    pub disks: Vec<SnapshotDisk>,
    /// Disks left out (independent, physical-mode RDM), with the reason.
    pub skipped: Vec<(DiskNode, String)>,
    /// The saved memory state, for [`LockedVm::create_snapshot_with_memory`].
    pub memory: Option<SnapshotMemory>,
}

impl LockedVm<'_> {
    /// Takes a snapshot: a redo log per disk (`NAME-000001.vmdk` + `-delta.vmdk`), the
    /// .vmx pointed at the redo logs, the snapshot recorded in the .vmsd as a child of the
    /// current one and made current. A `.vmsn` file keeps the .vmx as it was.
    ///
    /// On a running VM the runtime creates the same redo logs and switches the running
    /// disks onto them at one instant (QMP), before the .vmx and .vmsd are written; the
    /// bases are static from then on. A suspended VM is snapshotted on files (its disks
    /// read the same data).
    ///
    /// # Errors
    /// [`Error::NothingToSnapshot`]; [`Error::Runtime`] when the live switch fails;
    /// [`Error::LiveChain`] when QEMU does not write the file the .vmx names; disk and
    /// file errors. On error nothing is left changed, as far as undoing succeeds.
    pub fn create_snapshot(&mut self, name: &str, description: &str) -> Result<SnapshotCreated> {
        self.create(name, description, false)
    }

    /// Takes a snapshot of a running VM with its memory: as
    /// [`create_snapshot`](LockedVm::create_snapshot), and at the instant the disks
    /// switch onto their redo logs (the guest stopped) the VM's memory and device state
    /// is saved to `<vm>-Snapshot<uid>.vmem` next to the `.vmsn`; then the guest runs on.
    /// [`revert_to_snapshot`](LockedVm::revert_to_snapshot) of this snapshot leaves the
    /// VM suspended in the snapshot's state, and [`resume`](LockedVm::resume) (or
    /// `power_on`) carries on from there.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless the VM runs; as for
    /// [`create_snapshot`](LockedVm::create_snapshot) otherwise (a failed memory save
    /// leaves nothing: the disks are committed back and no file stays).
    pub fn create_snapshot_with_memory(
        &mut self,
        name: &str,
        description: &str,
    ) -> Result<SnapshotCreated> {
        self.create(name, description, true)
    }

    fn create(&mut self, name: &str, description: &str, memory: bool) -> Result<SnapshotCreated> {
        self.refuse_pending_merge()?;
        let live = self.live_view()?;
        if memory && live.is_none() {
            return Err(Error::WrongPowerState {
                vm: self.vm.name(),
                state: self.vm.power_state(self.host),
                reason: "only a running VM's memory can be saved in a snapshot",
            });
        }
        self.validate_tree()?;
        let (targets, skipped) = self.snapshot_targets()?;
        if targets.is_empty() {
            return Err(Error::NothingToSnapshot { vm: self.vm.name() });
        }
        let uid = self
            .db
            .snapshots()
            .iter()
            .map(|s| s.uid)
            .fold(self.db.last_uid(), u64::max)
            .saturating_add(1);
        let vmsn_name = format!("{}-Snapshot{uid}.vmsn", self.vm.stem());
        let vmsn = self.vm.dir.join(&vmsn_name);
        write_atomic(&vmsn, self.vm.config.to_string().as_bytes())?;
        let nodes: Vec<DiskNode> = targets.iter().map(|d| d.node).collect();
        let vmem = memory_file_name(&vmsn_name).map(|n| self.vm.dir.join(n));
        if let (true, Some(vmem)) = (memory, &vmem) {
            // The uid is new: a file of that name is a leftover no snapshot names.
            remove_file_if_exists(vmem)?;
        }
        let mut saved = None;
        let made = match (&live, &vmem) {
            (Some(view), Some(vmem)) if memory => self
                .switch_with_memory(view, &targets, vmem)
                .map(|(redo, m)| {
                    saved = Some(SnapshotMemory {
                        path: m.state_file,
                        size_bytes: m.size_bytes,
                        guest_paused: m.disks.guest_paused,
                        save_elapsed: m.save_elapsed,
                    });
                    redo
                }),
            (Some(view), _) => self.switch_to_redo_logs(view, &targets),
            (None, _) => {
                let bases: Vec<&Path> = targets.iter().map(|d| d.path.as_path()).collect();
                self.make_redo_logs(&bases)
            }
        };
        let created = made.inspect_err(|_| {
            let _ = remove_file_if_exists(&vmsn);
        })?;
        // Undoes the redo logs (on files, or by committing the running disks back) and
        // the memory file.
        let undo = |me: &Self, e: Error| {
            if let Some(m) = &saved {
                let _ = remove_file_if_exists(&m.path);
            }
            match &live {
                Some(view) => {
                    me.unswitch(&view.rt, &nodes);
                    e
                }
                None => discard(&created, e),
            }
        };
        let old: Vec<(DiskNode, String)> = targets
            .iter()
            .map(|d| (d.node, d.file_name.clone()))
            .collect();
        if let Err(e) = self.point_disks(nodes.iter().copied().zip(created.iter())) {
            let _ = remove_file_if_exists(&vmsn);
            return Err(undo(self, e));
        }
        let snapshot = Snapshot {
            uid,
            display_name: name.to_owned(),
            description: description.to_owned(),
            parent: self.db.current(),
            create_time_micros: now_micros(),
            filename: vmsn_name,
            disks: old.clone(),
        };
        let uid = match self.record_snapshot(snapshot) {
            Ok(uid) => uid,
            // Put the .vmx back; if even that fails, consolidate finds the redo logs.
            Err(e) if self.restore_disk_names(&old).is_ok() => {
                let _ = remove_file_if_exists(&vmsn);
                return Err(undo(self, e));
            }
            Err(e) => return Err(e),
        };
        if live.is_none() {
            for (d, redo) in targets.iter().zip(created.iter()) {
                super::tracking::carry(&d.path, redo);
            }
        }
        let disks = targets
            .iter()
            .zip(created.iter())
            .map(|(d, redo)| SnapshotDisk {
                node: d.node,
                base: d.path.clone(),
                redo: redo.clone(),
            })
            .collect();
        Ok(SnapshotCreated {
            uid,
            disks,
            skipped,
            memory: saved,
        })
    }

    /// The disks a snapshot covers, and those it leaves out with the reason.
    fn snapshot_targets(&self) -> Result<(Vec<VmDiskFile>, Skipped)> {
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        for d in self.vm.disks(self.host)? {
            let (desc, _) =
                vmdk::read_descriptor(&d.path).map_err(|e| Error::disk("read descriptor", e))?;
            let create_type = desc.create_type.to_string();
            if d.independent {
                skipped.push((d.node, "independent disk".to_owned()));
            } else if create_type == "vmfsPassthroughRawDeviceMap" || create_type == "vmfsRaw" {
                skipped.push((d.node, "physical-mode raw device".to_owned()));
            } else {
                targets.push(d);
            }
        }
        Ok((targets, skipped))
    }

    /// Creates a redo log (ESX naming, in the VM folder) over each of `bases`; on error
    /// the ones made are deleted again.
    fn make_redo_logs(&self, bases: &[&Path]) -> Result<Vec<PathBuf>> {
        let mut created = Vec::new();
        for base in bases {
            let made = next_redo_path(&self.vm.dir, base).and_then(|redo| {
                vmdk::create_child(base, &redo, vmdk::ChildFormat::VmfsSparse)
                    .map_err(|e| Error::disk("create redo log", e))?;
                Ok(redo)
            });
            match made {
                Ok(redo) => created.push(redo),
                Err(e) => return Err(discard(&created, e)),
            }
        }
        Ok(created)
    }

    /// Adds `snapshot` to the .vmsd as the current one; on error the database is read
    /// back from the file.
    fn record_snapshot(&mut self, snapshot: Snapshot) -> Result<u64> {
        let vmsd = self.vm.vmsd_path();
        let recorded = self
            .db
            .add(snapshot)
            .and_then(|uid| self.db.set_current(Some(uid)).map(|()| uid))
            .map_err(|e| Error::vmx(&vmsd, e))
            .and_then(|uid| self.save_vmsd().map(|()| uid));
        if recorded.is_err() {
            if let Ok(db) = super::read_vmsd(&vmsd) {
                self.db = db;
            }
        }
        recorded
    }

    /// Reverts to snapshot `uid`: each of its disks gets a fresh redo log the .vmx points
    /// at, the snapshot becomes current, and the discarded state's redo logs are deleted
    /// (never a file a remaining snapshot needs).
    ///
    /// A snapshot with memory ([`create_snapshot_with_memory`](Self::create_snapshot_with_memory))
    /// leaves the VM suspended in the snapshot's state, as ESX does: its memory file is
    /// hard-linked (or copied) to the VM's suspend file `<vm>.vmss` once the disks are
    /// reverted, and [`resume`](LockedVm::resume) or `power_on` carries on from there.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`]; [`Error::WrongPowerState`] for a suspended VM (its
    /// saved memory belongs to the current disks; a suspended state that a revert linked
    /// from the current snapshot's memory file is not refused: it is replaced) and for
    /// a running VM (power it off first: the guest would keep running on the state being
    /// discarded); disk and file errors.
    pub fn revert_to_snapshot(
        &mut self,
        uid: u64,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<Cleanup> {
        let linked_state = self.state_from_current_snapshot();
        if linked_state.is_none() {
            self.require_not(
                PowerState::Suspended,
                "discard the suspended state before reverting",
            )?;
        }
        self.require_not(PowerState::PoweredOn, "power it off first")?;
        let snap = self.snapshot(uid)?.clone();
        self.validate_tree()?;
        let memory = self.memory_file(&snap);
        let vmss = match &memory {
            Some(_) => Some(self.suspend_path()?),
            None => None,
        };
        if let Some(state) = &linked_state {
            // Only a link to a memory file the current snapshot keeps: nothing is lost.
            remove_file_if_exists(state)?;
            crate::fsutil::sync_dir(&crate::fsutil::parent_dir(state))?;
        }
        let mut notes = Vec::new();
        let mut nodes = Vec::new();
        let mut bases = Vec::new();
        for (node, name) in &snap.disks {
            if self.vm.config.disk(*node).is_none() {
                notes.push(format!(
                    "{node}: the VM no longer has this disk; left alone"
                ));
                continue;
            }
            nodes.push(*node);
            bases.push(self.vm.resolve_name(self.host, name)?);
        }
        let base_refs: Vec<&Path> = bases.iter().map(PathBuf::as_path).collect();
        let created = self.make_redo_logs(&base_refs)?;
        if let Err(e) = self.point_disks(nodes.into_iter().zip(created.iter())) {
            return Err(discard(&created, e));
        }
        self.db
            .set_current(Some(uid))
            .map_err(|e| Error::vmx(self.vm.vmsd_path(), e))?;
        self.save_vmsd()?;
        // Only now do the disks read the snapshot's state: the memory may follow.
        if let (Some(memory), Some(vmss)) = (&memory, &vmss) {
            if let Err(e) = link_or_copy(memory, vmss) {
                notes.push(format!(
                    "the snapshot's memory state was not restored ({e}); the VM powers on from its disks"
                ));
            }
        }
        let mut out = self.compact(false, progress)?;
        out.notes.extend(notes);
        Ok(out)
    }

    /// Removes snapshot `uid` as a restore point and commits the redo logs it no longer
    /// needs, without changing what any other snapshot or the current state reads.
    ///
    /// On a running VM, the redo log the VM writes is committed live (QEMU copies it
    /// into its parent while the guest writes, then switches over and the redo log is
    /// deleted); a link QEMU only reads as backing is left in place with a note in
    /// [`Cleanup::notes`] and merged by the next [`consolidate`](LockedVm::consolidate)
    /// after power-off.
    ///
    /// # Errors
    /// [`Error::UnknownSnapshot`]; [`Error::Runtime`] when a live commit fails (the VM
    /// keeps running on its redo log; the journal lets the next lock holder finish);
    /// [`Error::LiveChain`]; disk and file errors.
    pub fn remove_snapshot(
        &mut self,
        uid: u64,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<Cleanup> {
        self.refuse_pending_merge()?;
        self.snapshot(uid)?;
        self.validate_tree()?;
        let removed = self
            .db
            .remove(uid)
            .map_err(|e| Error::vmx(self.vm.vmsd_path(), e))?;
        self.save_vmsd()?;
        let mut out = self.compact(false, progress)?;
        self.remove_vmsn(&removed.filename, &mut out);
        if let Some(vmem) = memory_file_name(&removed.filename) {
            self.remove_vmsn(&vmem, &mut out);
        }
        Ok(out)
    }

    /// Removes every snapshot and commits every redo log into the base disks (on a
    /// running VM as far as [`remove_snapshot`](LockedVm::remove_snapshot) can: links
    /// QEMU reads as backing wait for the next consolidate after power-off).
    ///
    /// # Errors
    /// As for [`remove_snapshot`](LockedVm::remove_snapshot).
    pub fn remove_all_snapshots(&mut self, progress: &mut dyn vmdk::Progress) -> Result<Cleanup> {
        self.refuse_pending_merge()?;
        self.validate_tree()?;
        let uids: Vec<u64> = self.db.snapshots().iter().map(|s| s.uid).collect();
        let mut vmsns = Vec::new();
        for uid in uids {
            let s = self
                .db
                .remove(uid)
                .map_err(|e| Error::vmx(self.vm.vmsd_path(), e))?;
            vmsns.push(s.filename);
        }
        self.save_vmsd()?;
        let mut out = self.compact(false, progress)?;
        for f in vmsns {
            self.remove_vmsn(&f, &mut out);
            if let Some(vmem) = memory_file_name(&f) {
                self.remove_vmsn(&vmem, &mut out);
            }
        }
        Ok(out)
    }

    /// Commits redo logs no snapshot owns (the .vmx names a chain deeper than the .vmsd
    /// explains, as an interrupted backup leaves it) and deletes leftover redo logs and
    /// snapshot state files nothing references. Works on a running VM (live commits,
    /// see [`remove_snapshot`](LockedVm::remove_snapshot)); what it defers while the VM
    /// runs is merged by a consolidate after power-off.
    ///
    /// # Errors
    /// As for [`remove_snapshot`](LockedVm::remove_snapshot).
    pub fn consolidate(&mut self, progress: &mut dyn vmdk::Progress) -> Result<Cleanup> {
        self.refuse_pending_merge()?;
        // A backup snapshot still recorded here belongs to a backup that died: the backup
        // holds the VM lock for its whole run, so none is in progress while we hold it.
        let leftovers: Vec<u64> = self
            .db
            .snapshots()
            .iter()
            .filter(|s| s.display_name == super::BACKUP_SNAPSHOT_NAME)
            .map(|s| s.uid)
            .collect();
        let mut out = Cleanup::default();
        for uid in leftovers {
            out.notes
                .push(format!("removed leftover backup snapshot {uid}"));
            out.extend(self.remove_snapshot(uid, progress)?);
        }
        out.extend(self.compact(true, progress)?);
        let stem = self.vm.stem();
        let listed: Vec<String> = self
            .db
            .snapshots()
            .iter()
            .flat_map(|s| [Some(s.filename.clone()), memory_file_name(&s.filename)])
            .flatten()
            .collect();
        let entries = std::fs::read_dir(&self.vm.dir)
            .map_err(|e| Error::io(&self.vm.dir, "list folder", e))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = [".vmsn", ".vmem", ".vmem.partial"]
                .iter()
                .any(|ext| name.ends_with(ext));
            let ours = name.starts_with(&format!("{stem}-Snapshot")) && kind;
            if ours && !listed.contains(&name) {
                self.remove_vmsn(&name, &mut out);
            }
        }
        Ok(out)
    }

    fn snapshot(&self, uid: u64) -> Result<&Snapshot> {
        self.db.get(uid).ok_or_else(|| Error::UnknownSnapshot {
            vm: self.vm.name(),
            name: uid.to_string(),
        })
    }

    /// Opens every chain the .vmx and .vmsd name, so that a broken or hostile tree is
    /// refused before anything changes.
    fn validate_tree(&mut self) -> Result<()> {
        self.graph().map(|_| ())
    }

    /// Points each node's disk at the given file and writes the .vmx.
    fn point_disks<'a>(
        &mut self,
        disks: impl Iterator<Item = (DiskNode, &'a PathBuf)>,
    ) -> Result<()> {
        for (node, file) in disks {
            let name = self.vm.ref_name(self.host, file);
            if let Err(e) = self.vm.config.set_disk_file(node, &name) {
                let _ = self.reload_vmx();
                return Err(Error::vmx(&self.vm.vmx_path, e));
            }
        }
        self.save_vmx().inspect_err(|_| {
            let _ = self.reload_vmx();
        })
    }

    /// Writes the given file names (as originally written) back into the .vmx.
    fn restore_disk_names(&mut self, disks: &[(DiskNode, String)]) -> Result<()> {
        for (node, name) in disks {
            self.vm
                .config
                .set_disk_file(*node, name)
                .map_err(|e| Error::vmx(&self.vm.vmx_path, e))?;
        }
        self.save_vmx()
    }

    /// Deletes a snapshot state file no snapshot names any more (only inside the VM
    /// folder; a bad name is noted and left).
    fn remove_vmsn(&self, name: &str, out: &mut Cleanup) {
        let named = |s: &Snapshot| {
            s.filename == name || memory_file_name(&s.filename).as_deref() == Some(name)
        };
        if name.is_empty() || self.db.snapshots().iter().any(named) {
            return;
        }
        if vmx::validate_relative_name(name).is_err() || name.contains('/') {
            out.notes.push(format!(
                "snapshot state file {name:?} is not in the VM folder; left alone"
            ));
            return;
        }
        let path = self.vm.dir.join(name);
        match remove_file_if_exists(&path) {
            Ok(true) => out.deleted.push(path),
            Ok(false) => {}
            Err(e) => out.notes.push(e.to_string()),
        }
    }
}

/// Deletes redo logs made by a step that failed, and returns the step's error.
fn discard(created: &[PathBuf], err: Error) -> Error {
    for f in created.iter().rev() {
        // Best effort: a leftover is found and removed by consolidate.
        let _ = vmdk::delete(Path::new(f));
    }
    err
}
