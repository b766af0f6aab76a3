//! Where each disk of a backup goes.

use super::plan::{check_reserved, confine, Plan};
use super::vmxedit::VmxEdit;
use super::RestoreOptions;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use vmx::{Catalog, DatastorePath, DiskNode};

/// One thing to write.
#[derive(Debug, Clone)]
pub(super) enum Item {
    /// A disk converted from the backup file `from` to `target` in `format`.
    Disk {
        from: String,
        target: PathBuf,
        format: vmdk::DiskFormat,
    },
    /// A physical RDM's mapping file recreated for `device`.
    Rdm { device: PathBuf, target: PathBuf },
    /// A file copied from the backup; `.vmsd` files lose their snapshot entries (the
    /// backup holds the current state only).
    File {
        from: String,
        target: PathBuf,
        strip_snapshots: bool,
    },
}

impl Item {
    /// Where the item is written.
    pub(super) fn target(&self) -> &Path {
        match self {
            Item::Disk { target, .. } | Item::Rdm { target, .. } | Item::File { target, .. } => {
                target
            }
        }
    }
}

/// What decides the disks' places.
pub(super) struct DiskTargets<'a> {
    pub(super) host: &'a host::Host,
    pub(super) catalog: &'a Catalog,
    pub(super) place: &'a Catalog,
    pub(super) vm_dir: &'a Path,
    pub(super) vm_dir_dp: &'a DatastorePath,
    pub(super) opts: &'a RestoreOptions,
}

impl DiskTargets<'_> {
    /// Adds every disk of the catalog to `plan` and points the .vmx at it.
    pub(super) fn plan(&self, config: &mut VmxEdit, plan: &mut Plan) -> Result<()> {
        for disk in &self.catalog.disks {
            let placed = self
                .place
                .disks
                .iter()
                .find(|d| d.node == disk.node)
                .unwrap_or(disk);
            let target_dp = match &placed.diskname {
                Some(dp) => dp.clone(),
                None => {
                    let from = disk.filename.as_deref().unwrap_or("disk.vmdk");
                    let name = from.splitn(4, '-').nth(3).unwrap_or(from);
                    self.vm_dir_dp
                        .join(name)
                        .map_err(|e| Error::unsafe_path("disk file name", from, e.to_string()))?
                }
            };
            let what = format!("disk.{}.diskname", disk.node);
            let file_name = target_dp.file_name().unwrap_or_default();
            if !file_name.ends_with(".vmdk") {
                return Err(Error::unsafe_path(
                    what,
                    target_dp.to_string(),
                    "does not name a .vmdk file",
                ));
            }
            check_reserved(file_name)?;
            let target = confine(self.host, &target_dp, &what)?;
            let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
            if !plan.dirs.contains(&dir) {
                plan.dirs.push(dir.clone());
            }
            let reference = if dir == self.vm_dir {
                file_name.to_owned()
            } else {
                target_dp.to_string()
            };
            config
                .set_disk_file(disk.node, &reference)
                .map_err(|e| Error::dict("restored .vmx", e))?;
            if !self.plan_one(disk, target, plan)? {
                // Not restored (an RDM left out): the VM must not point at nothing.
                config
                    .dict_set(&format!("{}.present", disk.node), "FALSE")
                    .map_err(|e| Error::dict("restored .vmx", e))?;
            }
        }
        Ok(())
    }

    /// Plans one disk; false when it is left out (its node is then detached).
    fn plan_one(&self, disk: &vmx::CatalogDisk, target: PathBuf, plan: &mut Plan) -> Result<bool> {
        let exists = disk_exists(&target);
        if disk.backed_up {
            let from = disk.filename.clone().ok_or_else(|| Error::BadCatalog {
                location: "catalog".into(),
                reason: format!("disk {} has no filename", disk.node),
            })?;
            check_reserved(&from)?;
            let format = restore_format(
                self.opts,
                disk.format.as_deref(),
                &disk.node,
                &mut plan.notes,
            );
            let c = plan.conflict_if(exists, format!("disk {}", target.display()));
            plan.items.push((
                Item::Disk {
                    from,
                    target,
                    format,
                },
                c,
            ));
            return Ok(true);
        }
        let device = disk.rdm_device.as_deref().map(PathBuf::from);
        match device {
            Some(device) if device.exists() && self.opts.allow_rdm => {
                plan.rdm_devices.push(device.clone());
                let c = plan.conflict_if(exists, format!("disk {}", target.display()));
                plan.items.push((Item::Rdm { device, target }, c));
                return Ok(true);
            }
            Some(device) if device.exists() => plan.notes.push(format!(
                "{}: the backup maps raw device {} (not recreated: pass --allow-rdm to map it)",
                disk.node,
                device.display()
            )),
            device => plan.notes.push(format!(
                "{}: was not backed up ({}); its device {} is not present, so the mapping is not recreated",
                disk.node,
                disk.reason.as_deref().unwrap_or("skipped"),
                device.map(|d| d.display().to_string()).unwrap_or_else(|| "(unknown)".into())
            )),
        }
        Ok(false)
    }
}

/// The provisioning a restored disk gets.
fn restore_format(
    opts: &RestoreOptions,
    recorded: Option<&str>,
    node: &DiskNode,
    notes: &mut Vec<String>,
) -> vmdk::DiskFormat {
    use vmdk::DiskFormat as F;
    if let Some(f) = &opts.disk_format {
        return f.clone();
    }
    match recorded.map(F::parse) {
        Some(Ok(f @ (F::Thin | F::ZeroedThick | F::EagerZeroedThick))) => f,
        Some(_) if recorded == Some("rdm") => {
            notes.push(format!(
                "{node}: was a virtual-compatibility RDM; restored as a thin virtual disk"
            ));
            F::Thin
        }
        other => {
            if other.is_some() {
                notes.push(format!(
                    "{node}: recorded format {:?} restored as thin",
                    recorded.unwrap_or_default()
                ));
            }
            F::Thin
        }
    }
}

/// A disk exists at `target` if its descriptor or its flat extent does.
fn disk_exists(target: &Path) -> bool {
    let stem = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .trim_end_matches(".vmdk")
        .to_owned();
    target.symlink_metadata().is_ok()
        || target
            .with_file_name(format!("{stem}-flat.vmdk"))
            .symlink_metadata()
            .is_ok()
}
