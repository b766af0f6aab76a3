//! The clean-up every snapshot operation ends with: delete redo logs no state needs,
//! merge unpinned links into their only child's data (see the module doc of
//! [`crate::snapshot`]), journaled so an interrupted merge is finished by the next run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmx::DiskNode;

use super::graph::DiskGraph;
use super::LockedVm;
use crate::config::one_line;
use crate::error::{Error, Result};
use crate::fsutil::{parent_dir, read_text_opt, remove_file_if_exists, sync_dir, write_atomic};

/// Name of the merge journal in a VM folder.
pub const JOURNAL_FILE: &str = ".vcb-journal";

/// What a clean-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cleanup {
    /// Redo logs committed into their parents: (redo log, parent).
    pub merged: Vec<(PathBuf, PathBuf)>,
    /// Redo logs deleted because no state needed them.
    pub deleted: Vec<PathBuf>,
    /// Things noticed and left alone.
    pub notes: Vec<String>,
}

impl Cleanup {
    /// Adds another clean-up's work to this one.
    pub fn extend(&mut self, other: Cleanup) {
        self.merged.extend(other.merged);
        self.deleted.extend(other.deleted);
        self.notes.extend(other.notes);
    }
}

/// Journal op of a merge done on files (`vmdk::commit`).
const OP_COMMIT: &str = "commit";
/// Journal op of a merge QEMU does on a running disk (`block-commit` of its top).
const OP_LIVE_COMMIT: &str = "live-commit";

/// A merge in progress: commit `child` into `parent`, re-point `above`, rename references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Journal {
    version: u32,
    pub(super) op: String,
    pub(super) child: PathBuf,
    pub(super) parent: PathBuf,
    pub(super) above: Option<PathBuf>,
    /// The running disk whose top `child` is (live commits only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

impl Journal {
    fn offline(child: &Path, parent: &Path, above: Option<&Path>) -> Journal {
        Journal {
            version: 1,
            op: OP_COMMIT.to_owned(),
            child: child.to_path_buf(),
            parent: parent.to_path_buf(),
            above: above.map(Path::to_path_buf),
            node: None,
        }
    }

    pub(super) fn live(child: &Path, parent: &Path, node: DiskNode) -> Journal {
        Journal {
            version: 1,
            op: OP_LIVE_COMMIT.to_owned(),
            child: child.to_path_buf(),
            parent: parent.to_path_buf(),
            above: None,
            node: Some(node.to_string()),
        }
    }

    /// The disk node of a live commit.
    pub(super) fn disk_node(&self, vm_dir: &Path) -> Result<DiskNode> {
        self.node
            .as_deref()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::bad_file(vm_dir.join(JOURNAL_FILE), "live commit without a disk node")
            })
    }
}

impl LockedVm<'_> {
    /// Deletes unneeded redo logs and merges unpinned links until nothing changes.
    /// Leftover redo logs no reference reaches are deleted only when `delete_strays`.
    pub(super) fn compact(
        &mut self,
        delete_strays: bool,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<Cleanup> {
        let mut out = Cleanup::default();
        // Links other registered VMs' chains use (linked clones share bases): never
        // written, never deleted.
        let foreign = self.foreign_links();
        loop {
            let live = self.live_view()?;
            let busy = |f: &Path| live.as_ref().is_some_and(|v| v.busy.contains(f));
            let (pinned, g) = self.graph()?;
            let own = |f: &Path| parent_dir(f) == self.vm.dir && !foreign.contains(f);
            let garbage = g.files().find(|f| {
                !pinned.contains(*f)
                    && g.children_of(f).is_empty()
                    && g.parent_of(f).is_some()
                    && own(f)
                    && !busy(f)
                    && (delete_strays || !g.is_stray(f))
            });
            if let Some(victim) = garbage.cloned() {
                vmdk::delete(&victim).map_err(|e| Error::disk("delete unused redo log", e))?;
                out.deleted.push(victim);
                continue;
            }
            let mut merged = false;
            // Deferred merges are noted only once nothing else can be done: a merge
            // deferred now may become a live commit after another one (its child
            // becomes the active top).
            let mut deferred = Vec::new();
            for (child, parent, above) in find_merges(&g, &pinned, &own) {
                let files = [Some(&child), Some(&parent), above.as_ref()];
                let touches_qemu = files.iter().flatten().any(|f| busy(f));
                let live_top = live.as_ref().and_then(|v| {
                    let (node, chain) = v.top_of(&child)?;
                    (chain.get(1) == Some(&parent) && above.is_none()).then_some(node)
                });
                match (live.as_ref(), live_top) {
                    (Some(v), Some(node)) => {
                        self.live_merge(&v.rt, node, &child, &parent, progress)?
                    }
                    _ if touches_qemu => {
                        deferred.push(format!(
                            "{}: QEMU reads it as a backing file of the running VM; it is \
                             merged into {} at the next consolidate after power-off",
                            child.display(),
                            parent.display()
                        ));
                        continue;
                    }
                    _ => self.merge(&child, &parent, above.as_deref(), progress)?,
                }
                out.merged.push((child, parent));
                merged = true;
                break;
            }
            if merged {
                continue;
            }
            out.notes.extend(deferred);
            for s in g.strays() {
                if busy(s) {
                    continue;
                }
                out.notes.push(format!(
                    "{}: redo log left by an interrupted operation (consolidate removes it)",
                    s.display()
                ));
            }
            out.notes.extend(g.notes);
            break;
        }
        Ok(out)
    }

    /// Every link of the chains of the other registered VMs.
    fn foreign_links(&self) -> BTreeSet<PathBuf> {
        let (vms, _) = self.host.vms();
        vms.iter()
            .filter(|vm| vm.moref != self.vm.moref)
            .flat_map(|vm| vm.all_chains(self.host))
            .flatten()
            .collect()
    }

    /// Commits `child` into `parent` under a journal.
    fn merge(
        &mut self,
        child: &Path,
        parent: &Path,
        above: Option<&Path>,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<()> {
        let journal = Journal::offline(child, parent, above);
        self.journaled(&journal, |me| me.finish(&journal, progress))
    }

    /// Runs `step` with `journal` recorded in the VM folder, and removes the journal
    /// once the step succeeded.
    pub(super) fn journaled(
        &mut self,
        journal: &Journal,
        step: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let path = self.vm.dir.join(JOURNAL_FILE);
        let text = toml::to_string(journal).map_err(|e| Error::bad_file(&path, e.to_string()))?;
        write_atomic(&path, text.as_bytes())?;
        step(self)?;
        remove_file_if_exists(&path)?;
        sync_dir(&self.vm.dir)
    }

    /// Does (or finishes) a journaled merge. Repeatable: the commit writes the same
    /// data again, re-points `above` again and deletes what is left of the child.
    fn finish(&mut self, j: &Journal, progress: &mut dyn vmdk::Progress) -> Result<()> {
        // The child's tracking describes what the guest sees; the parent's (a leftover)
        // describes nothing the guest sees after the merge.
        let tracking = super::tracking::take_for_merge(j.op == OP_COMMIT, &j.child, &j.parent);
        if j.child.exists() {
            if j.op == OP_LIVE_COMMIT {
                // QEMU gives the parent a new CID at its first write: a live commit
                // stopped half way leaves the child's parentCID stale, while the child
                // still overrides everything the commit copied.
                adopt_parent_cid(&j.child, &j.parent)?;
            }
            let opts = self.confined.disk_options(false);
            vmdk::commit(&j.child, j.above.as_deref(), &opts, progress)
                .map_err(|e| Error::disk(format!("commit {}", j.child.display()), e))?;
        } else if let Some(stem) = j.child.to_str().and_then(|s| s.strip_suffix(".vmdk")) {
            // The descriptor went first; an interrupted delete may have left the extent.
            remove_file_if_exists(Path::new(&format!("{stem}-delta.vmdk")))?;
        }
        self.rename_references(&j.child, &j.parent)?;
        super::tracking::give_after_merge(tracking, &j.parent);
        Ok(())
    }

    /// Brings the .vmx in line with a running QEMU, then finishes a merge an interrupted
    /// process left in the journal. An offline merge whose files QEMU has open (the VM
    /// was started behind vcb's back) is left for after power-off, and snapshot
    /// operations are refused until then.
    pub(super) fn recover(&mut self) -> Result<()> {
        let live = self.live_view()?;
        if let Some(view) = &live {
            self.reconcile_with_qemu(view)?;
        }
        let path = self.vm.dir.join(JOURNAL_FILE);
        let Some(text) = read_text_opt(&path, 64 << 10)? else {
            self.pending_offline_merge = false;
            return Ok(());
        };
        let j: Journal =
            toml::from_str(&text).map_err(|e| Error::bad_file(&path, one_line(&e.to_string())))?;
        let confined = |p: &Path| p.is_absolute() && self.host.in_datastore(&parent_dir(p));
        let valid = j.version == 1
            && (j.op == OP_COMMIT || (j.op == OP_LIVE_COMMIT && j.above.is_none()))
            && confined(&j.parent)
            && parent_dir(&j.child) == self.vm.dir
            && j.above.as_deref().is_none_or(confined);
        if !valid {
            return Err(Error::bad_file(
                &path,
                "not a merge journal of this VM folder (refused)",
            ));
        }
        match &live {
            Some(view) if j.op == OP_LIVE_COMMIT => {
                let rt = view.rt.clone();
                self.finish_live(&rt, &j, &mut ())?;
            }
            Some(view) => {
                let files = [Some(&j.child), Some(&j.parent), j.above.as_ref()];
                if files.iter().flatten().any(|f| view.busy.contains(*f)) {
                    self.pending_offline_merge = true;
                    return Ok(());
                }
                self.finish(&j, &mut ())?;
            }
            None => self.finish(&j, &mut ())?,
        }
        self.pending_offline_merge = false;
        remove_file_if_exists(&path)?;
        sync_dir(&self.vm.dir)
    }

    /// Refuses snapshot changes while an interrupted offline merge waits for power-off.
    pub(super) fn refuse_pending_merge(&self) -> Result<()> {
        if self.pending_offline_merge {
            return Err(Error::LiveChain {
                vm: self.vm.name(),
                reason: format!(
                    "an interrupted merge ({}) involves files the running VM has open; \
                     power it off to finish it",
                    JOURNAL_FILE
                ),
            });
        }
        Ok(())
    }
}

/// Sets `child`'s parentCID to `parent`'s CID when they differ.
fn adopt_parent_cid(child: &Path, parent: &Path) -> Result<()> {
    let read = |p: &Path| vmdk::read_descriptor(p).map_err(|e| Error::disk("read descriptor", e));
    let (p, _) = read(parent)?;
    let (mut c, store) = read(child)?;
    if c.parent_cid != p.cid {
        c.parent_cid = p.cid;
        vmdk::write_descriptor(child, store, &c).map_err(|e| Error::disk("update parentCID", e))?;
    }
    Ok(())
}

/// Every unpinned file F of this VM's own (in its folder, used by no other VM's chain)
/// with exactly one child C (its own too, not a leftover), where C has at most one
/// child X: (C, F, X). A parent anywhere else is pinned: it is never written.
fn find_merges(
    g: &DiskGraph,
    pinned: &BTreeSet<PathBuf>,
    in_folder: &dyn Fn(&Path) -> bool,
) -> Vec<(PathBuf, PathBuf, Option<PathBuf>)> {
    g.files()
        .filter(|f| !pinned.contains(*f) && in_folder(f))
        .filter_map(|f| {
            let kids = g.children_of(f);
            let [c] = kids.as_slice() else {
                return None;
            };
            if g.is_stray(c) || !in_folder(c) {
                return None;
            }
            let grand = g.children_of(c);
            (grand.len() <= 1)
                .then(|| ((*c).clone(), f.clone(), grand.first().map(|x| (*x).clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_of_both_kinds_round_trip() {
        // A journal written before live commits existed still reads.
        let old = "version = 1\nop = \"commit\"\nchild = \"/d/vm-000001.vmdk\"\nparent = \"/d/vm.vmdk\"\n";
        let j: Journal = toml::from_str(old).unwrap();
        assert_eq!(
            j,
            Journal::offline(
                Path::new("/d/vm-000001.vmdk"),
                Path::new("/d/vm.vmdk"),
                None
            )
        );
        let text = toml::to_string(&j).unwrap();
        assert!(!text.contains("node"), "{text}");

        let node: DiskNode = "scsi0:1".parse().unwrap();
        let live = Journal::live(
            Path::new("/d/vm-000002.vmdk"),
            Path::new("/d/vm.vmdk"),
            node,
        );
        let back: Journal = toml::from_str(&toml::to_string(&live).unwrap()).unwrap();
        assert_eq!(back, live);
        assert_eq!(back.disk_node(Path::new("/d")).unwrap(), node);
        assert!(matches!(
            j.disk_node(Path::new("/d")),
            Err(Error::BadFile { .. })
        ));
    }
}
