//! Snapshots of a running VM: its QEMU (the runtime crate) writes the disks, so the
//! redo logs are switched in and committed back over QMP instead of on files.
//!
//! ## What is true while QEMU runs
//! QEMU's block chain of each disk is the truth of what the disk writes (its top) and
//! reads (the rest). The .vmx follows it: a process killed between a live switch and its
//! .vmx write leaves the .vmx one link behind, and the next lock holder sets it to
//! QEMU's top before anything else ([`LockedVm::reconcile_with_qemu`]). No file in any
//! running chain is deleted or written by vcb: a merge whose child is the active top is
//! done by QEMU (`block-commit`, then a pivot), and a merge of a link QEMU reads as a
//! backing file waits for the next consolidate after power-off.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vmx::DiskNode;

use super::compact::Journal;
use super::graph::{next_redo_path, redo_number};
use super::LockedVm;
use crate::error::{Error, Result};
use crate::fsutil::remove_file_if_exists;
use crate::vm::VmDiskFile;

/// What QEMU runs, read once per clean-up step.
pub(super) struct LiveView {
    /// The runtime handle.
    pub(super) rt: runtime::Vm,
    /// Each .vmx disk QEMU runs: node and its chain, top first (canonical).
    pub(super) chains: Vec<(DiskNode, Vec<PathBuf>)>,
    /// Every file in any running chain (canonical).
    pub(super) busy: BTreeSet<PathBuf>,
}

impl LiveView {
    /// The disk whose active top is `file`, with that disk's chain.
    pub(super) fn top_of(&self, file: &Path) -> Option<(DiskNode, &[PathBuf])> {
        self.chains
            .iter()
            .find(|(_, c)| c.first().map(PathBuf::as_path) == Some(file))
            .map(|(n, c)| (*n, c.as_slice()))
    }
}

/// `path` canonical when it exists (a file QEMU holds may be gone from the folder).
fn canon(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl LockedVm<'_> {
    /// The runtime handle when QEMU runs the VM.
    pub(super) fn running(&self) -> Result<Option<runtime::Vm>> {
        self.vm.runtime_state(self.host)
    }

    /// An [`Error::Runtime`] for this VM.
    pub(super) fn rt_err(&self, source: runtime::Error) -> Error {
        Error::Runtime {
            vm: self.vm.name(),
            source: Box::new(source),
        }
    }

    /// What QEMU runs now, or `None` when the VM does not run.
    pub(super) fn live_view(&self) -> Result<Option<LiveView>> {
        let Some(rt) = self.running()? else {
            return Ok(None);
        };
        let mut chains = Vec::new();
        for d in self.vm.config.disks() {
            match rt.node_chain(d.node) {
                Ok(files) => chains.push((d.node, files.iter().map(|f| canon(f)).collect())),
                // A disk added to the .vmx while the VM runs: QEMU does not know it.
                Err(runtime::Error::UnknownDisk { .. }) => {}
                Err(e) => return Err(self.rt_err(e)),
            }
        }
        let busy = rt
            .open_files()
            .map_err(|e| self.rt_err(e))?
            .iter()
            .map(|f| canon(f))
            .collect();
        Ok(Some(LiveView { rt, chains, busy }))
    }

    /// Points each .vmx disk at the file QEMU writes, when they differ (a process died
    /// between switching a running disk onto a redo log and writing the .vmx). Returns
    /// what it changed, as notes.
    pub(super) fn reconcile_with_qemu(&mut self, view: &LiveView) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for (node, chain) in &view.chains {
            let Some(top) = chain.first() else { continue };
            let Some(disk) = self.vm.config.disk(*node) else {
                continue;
            };
            let named = self.vm.resolve_name(self.host, &disk.file_name)?;
            if named == *top {
                continue;
            }
            if !self.confined.contains(top) {
                return Err(Error::OutsideDatastores {
                    file: self.vm.vmx_path.clone(),
                    name: top.display().to_string(),
                    reason: format!(
                        "QEMU writes {}, outside the host's datastores",
                        top.display()
                    ),
                });
            }
            let name = self.vm.ref_name(self.host, top);
            self.vm
                .config
                .set_disk_file(*node, &name)
                .map_err(|e| Error::vmx(&self.vm.vmx_path, e))?;
            notes.push(format!(
                "{node}: the .vmx named {} but QEMU writes {}; .vmx updated",
                named.display(),
                top.display()
            ));
        }
        if !notes.is_empty() {
            self.save_vmx().inspect_err(|_| {
                let _ = self.reload_vmx();
            })?;
        }
        Ok(notes)
    }

    /// Creates a redo log over each target disk and switches the running disks onto
    /// them in one step. Returns the redo logs (canonical), in target order.
    pub(super) fn switch_to_redo_logs(
        &self,
        view: &LiveView,
        targets: &[VmDiskFile],
    ) -> Result<Vec<PathBuf>> {
        let pairs = self.redo_pairs(view, targets)?;
        view.rt
            .live_snapshot_as(&pairs, vmdk::ChildFormat::VmfsSparse)
            .map_err(|e| self.rt_err(e))?;
        Ok(pairs.into_iter().map(|(_, p)| canon(&p)).collect())
    }

    /// [`switch_to_redo_logs`](Self::switch_to_redo_logs) that also saves the VM's
    /// memory and device state to `state` at the switch (the guest runs on). On error
    /// nothing is switched and no state file is left.
    pub(super) fn switch_with_memory(
        &self,
        view: &LiveView,
        targets: &[VmDiskFile],
        state: &Path,
    ) -> Result<(Vec<PathBuf>, runtime::MemorySnapshot)> {
        let pairs = self.redo_pairs(view, targets)?;
        let taken = view
            .rt
            .live_snapshot_with_memory(&pairs, vmdk::ChildFormat::VmfsSparse, state)
            .map_err(|e| self.rt_err(e))?;
        Ok((pairs.into_iter().map(|(_, p)| canon(&p)).collect(), taken))
    }

    /// The redo log each target disk gets: checks that QEMU writes the file the .vmx
    /// names, and numbers the redo logs.
    fn redo_pairs(
        &self,
        view: &LiveView,
        targets: &[VmDiskFile],
    ) -> Result<Vec<(DiskNode, PathBuf)>> {
        let mut pairs: Vec<(DiskNode, PathBuf)> = Vec::new();
        for d in targets {
            let top = view.chains.iter().find(|(n, _)| *n == d.node);
            match top.and_then(|(_, c)| c.first()) {
                Some(top) if *top == d.path => {}
                other => {
                    return Err(Error::LiveChain {
                        vm: self.vm.name(),
                        reason: format!(
                            "{}: the .vmx names {} but QEMU writes {}",
                            d.node,
                            d.path.display(),
                            other.map_or("nothing".into(), |p| p.display().to_string())
                        ),
                    })
                }
            }
            let mut redo = next_redo_path(&self.vm.dir, &d.path)?;
            // Two disks with the same name stem (on different datastores) would get the
            // same number: the files are only made by the runtime, all at once.
            while pairs.iter().any(|(_, p)| *p == redo) {
                redo = bump(&redo).ok_or_else(|| Error::BadChain {
                    path: d.path.clone(),
                    reason: "redo log numbers are exhausted".to_owned(),
                })?;
            }
            pairs.push((d.node, redo));
        }
        Ok(pairs)
    }

    /// Undoes a live switch after a later step failed: commits each disk back into its
    /// parent (QEMU deletes the redo logs). What cannot be undone is left for the next
    /// lock holder, which reconciles the .vmx with QEMU.
    pub(super) fn unswitch(&self, rt: &runtime::Vm, nodes: &[DiskNode]) {
        for node in nodes {
            let _ = rt.live_commit(*node, &mut ());
        }
    }

    /// Commits the active top `child` of a running disk into `parent` under a journal.
    pub(super) fn live_merge(
        &mut self,
        rt: &runtime::Vm,
        node: DiskNode,
        child: &Path,
        parent: &Path,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<()> {
        let journal = Journal::live(child, parent, node);
        self.journaled(&journal, |me| me.finish_live(rt, &journal, progress))
    }

    /// Does (or finishes) a journaled live commit. Repeatable: when QEMU's chain still
    /// holds the child, the commit runs (again; a job a killed process left in QEMU is
    /// carried to its end by the runtime), else only the bookkeeping is left.
    pub(super) fn finish_live(
        &mut self,
        rt: &runtime::Vm,
        j: &Journal,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<()> {
        let node = j.disk_node(&self.vm.dir)?;
        let chain: Vec<PathBuf> = match rt.node_chain(node) {
            Ok(files) => files.iter().map(|f| canon(f)).collect(),
            Err(e) => return Err(self.rt_err(e)),
        };
        if chain.contains(&j.child) {
            if chain.first() != Some(&j.child) {
                return Err(Error::LiveChain {
                    vm: self.vm.name(),
                    reason: format!(
                        "{node}: {} is no longer the file QEMU writes; cannot commit it live",
                        j.child.display()
                    ),
                });
            }
            rt.live_commit(node, progress).map_err(|e| self.rt_err(e))?;
        } else {
            // The commit pivoted; a killed process may have left the old top's node open.
            rt.close_detached(&j.child).map_err(|e| self.rt_err(e))?;
        }
        if j.child.exists() {
            vmdk::delete(&j.child).map_err(|e| Error::disk("delete committed redo log", e))?;
        } else if let Some(stem) = j.child.to_str().and_then(|s| s.strip_suffix(".vmdk")) {
            remove_file_if_exists(Path::new(&format!("{stem}-delta.vmdk")))?;
        }
        self.rename_references(&j.child, &j.parent)
    }
}

/// `STEM-NNNNNN.vmdk` with the number one higher.
fn bump(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (stem, n) = redo_number(name)?;
    let next = n.checked_add(1).filter(|n| *n <= 999_999)?;
    Some(path.with_file_name(format!("{stem}-{next:06}.vmdk")))
}
