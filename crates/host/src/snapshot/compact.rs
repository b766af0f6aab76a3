//! The clean-up every snapshot operation ends with: delete redo logs no state needs,
//! merge unpinned links into their only child's data (see the module doc of
//! [`crate::snapshot`]), journaled so an interrupted merge is finished by the next run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// A merge in progress: commit `child` into `parent`, re-point `above`, rename references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u32,
    op: String,
    child: PathBuf,
    parent: PathBuf,
    above: Option<PathBuf>,
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
        loop {
            let (pinned, g) = self.graph()?;
            let in_folder = |f: &Path| parent_dir(f) == self.vm.dir;
            let garbage = g.files().find(|f| {
                !pinned.contains(*f)
                    && g.children_of(f).is_empty()
                    && g.parent_of(f).is_some()
                    && in_folder(f)
                    && (delete_strays || !g.is_stray(f))
            });
            if let Some(victim) = garbage.cloned() {
                vmdk::delete(&victim).map_err(|e| Error::disk("delete unused redo log", e))?;
                out.deleted.push(victim);
                continue;
            }
            if let Some((child, parent, above)) = find_merge(&g, &pinned, &in_folder) {
                self.merge(&child, &parent, above.as_deref(), progress)?;
                out.merged.push((child, parent));
                continue;
            }
            for s in g.strays() {
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

    /// Commits `child` into `parent` under a journal.
    fn merge(
        &mut self,
        child: &Path,
        parent: &Path,
        above: Option<&Path>,
        progress: &mut dyn vmdk::Progress,
    ) -> Result<()> {
        let journal = Journal {
            version: 1,
            op: "commit".to_owned(),
            child: child.to_path_buf(),
            parent: parent.to_path_buf(),
            above: above.map(Path::to_path_buf),
        };
        let path = self.vm.dir.join(JOURNAL_FILE);
        let text = toml::to_string(&journal).map_err(|e| Error::bad_file(&path, e.to_string()))?;
        write_atomic(&path, text.as_bytes())?;
        self.finish(&journal, progress)?;
        remove_file_if_exists(&path)?;
        sync_dir(&self.vm.dir)
    }

    /// Does (or finishes) a journaled merge. Repeatable: the commit writes the same
    /// data again, re-points `above` again and deletes what is left of the child.
    fn finish(&mut self, j: &Journal, progress: &mut dyn vmdk::Progress) -> Result<()> {
        if j.child.exists() {
            let opts = vmdk::OpenOptions {
                writable: false,
                allow_outside_paths: self.allow_outside,
            };
            vmdk::commit(&j.child, j.above.as_deref(), &opts, progress)
                .map_err(|e| Error::disk(format!("commit {}", j.child.display()), e))?;
        } else if let Some(stem) = j.child.to_str().and_then(|s| s.strip_suffix(".vmdk")) {
            // The descriptor went first; an interrupted delete may have left the extent.
            remove_file_if_exists(Path::new(&format!("{stem}-delta.vmdk")))?;
        }
        self.rename_references(&j.child, &j.parent)
    }

    /// Finishes a merge an interrupted process left in the journal.
    pub(super) fn recover(&mut self) -> Result<()> {
        let path = self.vm.dir.join(JOURNAL_FILE);
        let Some(text) = read_text_opt(&path, 64 << 10)? else {
            return Ok(());
        };
        let j: Journal =
            toml::from_str(&text).map_err(|e| Error::bad_file(&path, one_line(&e.to_string())))?;
        let confined = |p: &Path| p.is_absolute() && self.host.in_datastore(&parent_dir(p));
        let valid = j.version == 1
            && j.op == "commit"
            && confined(&j.parent)
            && parent_dir(&j.child) == self.vm.dir
            && j.above.as_deref().is_none_or(confined);
        if !valid {
            return Err(Error::bad_file(
                &path,
                "not a merge journal of this VM folder (refused)",
            ));
        }
        self.finish(&j, &mut ())?;
        remove_file_if_exists(&path)?;
        sync_dir(&self.vm.dir)
    }
}

/// An unpinned file F with exactly one child C (in the VM folder, not a leftover), where
/// C has at most one child X: (C, F, X).
fn find_merge(
    g: &DiskGraph,
    pinned: &BTreeSet<PathBuf>,
    in_folder: &dyn Fn(&Path) -> bool,
) -> Option<(PathBuf, PathBuf, Option<PathBuf>)> {
    g.files().filter(|f| !pinned.contains(*f)).find_map(|f| {
        let kids = g.children_of(f);
        let [c] = kids.as_slice() else {
            return None;
        };
        if g.is_stray(c) || !in_folder(c) {
            return None;
        }
        let grand = g.children_of(c);
        (grand.len() <= 1).then(|| ((*c).clone(), f.clone(), grand.first().map(|x| (*x).clone())))
    })
}
