//! The tree of a VM's disk files: every link of every chain the .vmx and .vmsd name,
//! plus leftover redo logs in the VM folder whose chains lead into that tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::Confined;

/// The disk file tree. Paths are canonical.
#[derive(Debug, Default)]
pub(crate) struct DiskGraph {
    /// Each file and its parent (`None` for a base disk).
    parent: BTreeMap<PathBuf, Option<PathBuf>>,
    /// Files no reference reaches: redo logs left in the VM folder by an interrupted run.
    strays: BTreeSet<PathBuf>,
    /// Notes about files that were looked at and ignored.
    pub(crate) notes: Vec<String>,
}

impl DiskGraph {
    /// Builds the tree from the chains of `refs` (descriptor paths, canonical) and the
    /// redo logs (`NAME-NNNNNN.vmdk`) in `vm_dir`.
    ///
    /// # Errors
    /// [`Error::Disk`] when a referenced chain does not open (missing parent, CID
    /// mismatch, loop...); [`Error::OutsideDatastores`] for a link outside the host's
    /// datastores.
    pub(crate) fn build(confined: &Confined, vm_dir: &Path, refs: &[PathBuf]) -> Result<DiskGraph> {
        let mut g = DiskGraph::default();
        for r in refs {
            if g.parent.contains_key(r) {
                continue;
            }
            let chain = open_chain(confined, r)?;
            g.insert_chain(&chain)?;
        }
        for candidate in redo_logs_in(vm_dir)? {
            if g.parent.contains_key(&candidate) {
                continue;
            }
            match open_chain(confined, &candidate) {
                Ok(chain) if chain.iter().any(|p| g.parent.contains_key(p)) => {
                    for p in chain.iter().take_while(|p| !g.parent.contains_key(*p)) {
                        g.strays.insert(p.clone());
                    }
                    g.insert_chain(&chain)?;
                }
                Ok(_) => {}
                Err(e) => g
                    .notes
                    .push(format!("ignored {}: {e}", candidate.display())),
            }
        }
        Ok(g)
    }

    fn insert_chain(&mut self, chain: &[PathBuf]) -> Result<()> {
        for (i, link) in chain.iter().enumerate() {
            let parent = chain.get(i + 1).cloned();
            match self.parent.get(link) {
                Some(known) if *known != parent => {
                    return Err(Error::BadChain {
                        path: link.clone(),
                        reason: "reached through two different parents".to_owned(),
                    })
                }
                _ => {
                    self.parent.insert(link.clone(), parent);
                }
            }
        }
        Ok(())
    }

    /// Every file, in path order.
    pub(crate) fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.parent.keys()
    }

    /// The parent of `file`.
    pub(crate) fn parent_of(&self, file: &Path) -> Option<&PathBuf> {
        self.parent.get(file).and_then(Option::as_ref)
    }

    /// The children of `file`, in path order.
    pub(crate) fn children_of(&self, file: &Path) -> Vec<&PathBuf> {
        self.parent
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(file))
            .map(|(c, _)| c)
            .collect()
    }

    /// True for a leftover redo log no reference reaches.
    pub(crate) fn is_stray(&self, file: &Path) -> bool {
        self.strays.contains(file)
    }

    /// The leftover redo logs.
    pub(crate) fn strays(&self) -> impl Iterator<Item = &PathBuf> {
        self.strays.iter()
    }
}

/// Opens the chain at `path` read-only and returns its links, top first, canonical, each
/// checked to lie inside a datastore.
pub(crate) fn open_chain(confined: &Confined, path: &Path) -> Result<Vec<PathBuf>> {
    let opts = confined.disk_options(false);
    let disk = vmdk::Disk::open(path, &opts).map_err(|e| Error::disk("open disk chain", e))?;
    let mut out = Vec::new();
    for link in disk.links() {
        let canon = crate::fsutil::canonical(link.path(), "disk")?;
        if !confined.contains(&canon) {
            return Err(Error::OutsideDatastores {
                file: path.to_path_buf(),
                name: link.path().display().to_string(),
                reason: format!("{} lies outside the host's datastores", canon.display()),
            });
        }
        out.push(canon);
    }
    Ok(out)
}

/// True for a redo log name: `STEM-NNNNNN.vmdk` (ESX's numbering, six digits).
pub(crate) fn redo_number(file_name: &str) -> Option<(&str, u32)> {
    let base = file_name.strip_suffix(".vmdk")?;
    let (stem, digits) = base.rsplit_once('-')?;
    if stem.is_empty() || digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, digits.parse().ok()?))
}

/// The redo logs in `dir` (canonical paths).
fn redo_logs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list folder", e))? {
        let entry = entry.map_err(|e| Error::io(dir, "list folder", e))?;
        let name = entry.file_name();
        if name.to_str().and_then(redo_number).is_some() && entry.path().is_file() {
            out.push(crate::fsutil::canonical(&entry.path(), "disk")?);
        }
    }
    out.sort();
    Ok(out)
}

/// The path for the next redo log of `disk` in `dir`: `STEM-NNNNNN.vmdk`, where STEM is
/// the disk's name without any redo number and NNNNNN is one past the highest number any
/// file of that stem in `dir` has.
pub(crate) fn next_redo_path(dir: &Path, disk: &Path) -> Result<PathBuf> {
    let name = disk
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("disk.vmdk");
    let stem = match redo_number(name) {
        Some((stem, _)) => stem.to_owned(),
        None => name.strip_suffix(".vmdk").unwrap_or(name).to_owned(),
    };
    let mut highest = 0u32;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list folder", e))? {
        let entry = entry.map_err(|e| Error::io(dir, "list folder", e))?;
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let plain = file
            .strip_suffix("-delta.vmdk")
            .map(|s| format!("{s}.vmdk"));
        if let Some((s, n)) = redo_number(plain.as_deref().unwrap_or(&file)) {
            if s == stem {
                highest = highest.max(n);
            }
        }
    }
    let next = highest
        .checked_add(1)
        .filter(|n| *n <= 999_999)
        .ok_or_else(|| Error::BadChain {
            path: disk.to_path_buf(),
            reason: "redo log numbers are exhausted".to_owned(),
        })?;
    Ok(dir.join(format!("{stem}-{next:06}.vmdk")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redo_names() {
        assert_eq!(redo_number("vm-000001.vmdk"), Some(("vm", 1)));
        assert_eq!(redo_number("my-vm_1-000012.vmdk"), Some(("my-vm_1", 12)));
        assert_eq!(redo_number("vm-000001-delta.vmdk"), None);
        assert_eq!(redo_number("vm-flat.vmdk"), None);
        assert_eq!(redo_number("-000001.vmdk"), None);
        assert_eq!(redo_number("vm-00001.vmdk"), None);
    }

    #[test]
    fn next_redo_numbers_past_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            next_redo_path(d, &d.join("vm.vmdk")).unwrap(),
            d.join("vm-000001.vmdk")
        );
        std::fs::write(d.join("vm-000001.vmdk"), "").unwrap();
        std::fs::write(d.join("vm-000007-delta.vmdk"), "").unwrap();
        std::fs::write(d.join("vm_1-000009.vmdk"), "").unwrap();
        assert_eq!(
            next_redo_path(d, &d.join("vm-000001.vmdk")).unwrap(),
            d.join("vm-000008.vmdk")
        );
        assert_eq!(
            next_redo_path(d, &d.join("vm_1.vmdk")).unwrap(),
            d.join("vm_1-000010.vmdk")
        );
    }
}
