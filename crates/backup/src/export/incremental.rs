//! Incremental and differential VMDK exports (`--incremental-from`, `--differential-from`).
//!
//! With a base backup folder (beside the new one) whose catalog recorded each disk's
//! change ID, a backup asks changed-block tracking for the areas changed since that ID
//! and writes each disk as a hosted sparse child (monolithicSparse, 64 KiB grains) of the
//! base folder's disk: only the grains those areas touch are stored, its
//! `parentFileNameHint` is `../<base folder>/<disk>` and its `parentCID` the base disk's
//! CID, so `qemu-img` reads the chain, `vmkfstools -i` flattens it and `vcbRestore`
//! restores it (checking every folder of the chain). Incremental and differential only
//! differ in which folder is the base: the previous backup, or the full one. A disk that
//! tracking cannot answer for (tracking off or lost, a new disk, a new size) is exported
//! whole, and the backup says why.

use crate::dest::Destination;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use vmx::DiskNode;

/// Grain of the hosted sparse children written (and the unit areas are rounded to).
const GRAIN: u64 = 64 * 1024;
/// Largest read from the source at once.
const PIECE: u64 = 4 << 20;

/// The backup folder an incremental export builds on.
#[derive(Debug)]
pub(crate) struct BaseBackup {
    /// The folder (canonical).
    pub(crate) dir: PathBuf,
    /// Its name, as the new backup's catalog records it.
    pub(crate) name: String,
    pub(crate) catalog: vmx::Catalog,
}

impl BaseBackup {
    /// Opens the complete backup folder `base` of `vm` as the base of a backup into
    /// `dest`, which must be a local folder beside it.
    ///
    /// # Errors
    /// [`Error::UnsupportedDestination`] for a remote destination or a base elsewhere;
    /// catalog errors; [`Error::BadCatalog`] for a backup of another VM.
    pub(crate) fn open(base: &Path, dest: &dyn Destination, vm: &host::Vm) -> Result<BaseBackup> {
        let refuse = |reason: String| Error::UnsupportedDestination {
            spec: dest.location(),
            reason,
        };
        let Some(dest_dir) = dest.local_dir() else {
            return Err(refuse(
                "incremental and differential exports go to local folders".into(),
            ));
        };
        let dir =
            std::fs::canonicalize(base).map_err(|e| Error::io(base, "open base backup", e))?;
        let dest_parent = dest_dir
            .parent()
            .map(|p| {
                std::fs::canonicalize(if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                })
            })
            .transpose()
            .map_err(|e| Error::io(dest_dir, "resolve", e))?;
        if dir.parent() != dest_parent.as_deref() {
            return Err(refuse(format!(
                "the base backup {} must lie beside the new one (the chain is kept relative)",
                dir.display()
            )));
        }
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| refuse(format!("{} has no usable name", dir.display())))?
            .to_owned();
        let catalog = crate::restore::read_catalog(&crate::dest::LocalDir::new(dir.clone()))?;
        if !catalog.is_backup_of(vm.uuid(), &vm.name()) {
            return Err(Error::BadCatalog {
                location: dir.display().to_string(),
                reason: format!(
                    "it is a backup of {}, not of {}",
                    catalog.display_name,
                    vm.name()
                ),
            });
        }
        Ok(BaseBackup { dir, name, catalog })
    }

    /// The change ID the base recorded for the disk at `node`.
    pub(crate) fn change_id(&self, node: &str) -> Option<String> {
        let node: DiskNode = node.parse().ok()?;
        self.catalog
            .disks
            .iter()
            .find(|d| d.node == node)?
            .change_id
            .clone()
    }

    /// The base's disk at `node`, when it has one of `capacity` bytes.
    pub(crate) fn disk(&self, node: DiskNode, capacity: u64) -> Option<(PathBuf, String)> {
        let d = self
            .catalog
            .disks
            .iter()
            .find(|d| d.node == node && d.backed_up)?;
        if d.capacity_bytes.is_some_and(|c| c != capacity) {
            return None;
        }
        let file = d.filename.clone()?;
        Some((self.dir.join(&file), format!("../{}/{file}", self.name)))
    }
}

/// Writes `dst` as a hosted sparse child of `parent` (named `hint` in its descriptor)
/// holding every grain the `changed` areas touch, read from `source`.
///
/// # Errors
/// Disk errors; [`Error::Cancelled`] when `progress` breaks.
pub(crate) fn export_changed(
    source: &mut dyn vmdk::DiskSource,
    parent: &Path,
    hint: &str,
    dst: &Path,
    changed: &[(u64, u64)],
    progress: &mut dyn vmdk::Progress,
) -> Result<()> {
    vmdk::create_child_hinted(parent, dst, vmdk::ChildFormat::HostedSparse, hint)?;
    let written = write_areas(source, dst, changed, progress);
    if written.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    written
}

fn write_areas(
    source: &mut dyn vmdk::DiskSource,
    dst: &Path,
    changed: &[(u64, u64)],
    progress: &mut dyn vmdk::Progress,
) -> Result<()> {
    let opts = vmdk::OpenOptions {
        writable: true,
        confinement: vmdk::Confinement::Anywhere,
        source: None,
    };
    let mut child = vmdk::Disk::open(dst, &opts)?;
    let capacity = child.capacity().min(source.capacity());
    let areas = grains(changed, capacity);
    progress.start(areas.iter().map(|a| a.1).sum());
    let mut buf = Vec::new();
    for (start, len) in areas {
        let mut pos = start;
        while pos < start + len {
            let n = (start + len - pos).min(PIECE);
            buf.resize(n as usize, 0);
            source.read_at(pos, &mut buf)?;
            child.write_at(pos, &buf)?;
            if progress.advance(n).is_break() {
                return Err(Error::Cancelled);
            }
            pos += n;
        }
    }
    child.close()?;
    progress.finish();
    Ok(())
}

/// `areas` widened to whole grains, merged, clipped to `capacity`.
fn grains(areas: &[(u64, u64)], capacity: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(start, len) in areas {
        let s = start / GRAIN * GRAIN;
        let e = start
            .saturating_add(len)
            .div_ceil(GRAIN)
            .saturating_mul(GRAIN)
            .min(capacity);
        if e <= s {
            continue;
        }
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll >= s => *ll = (*ll).max(e - *ls),
            _ => out.push((s, e - s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::grains;

    #[test]
    fn areas_become_whole_merged_grains() {
        let g = 65536;
        assert_eq!(
            grains(&[(100, 10), (g - 1, 2), (5 * g, g)], 10 * g),
            vec![(0, 2 * g), (5 * g, g)]
        );
        assert_eq!(
            grains(&[(9 * g + 5, 1 << 40)], 10 * g - 512),
            vec![(9 * g, g - 512)]
        );
        assert!(grains(&[(20 * g, 1)], 10 * g).is_empty());
    }
}
