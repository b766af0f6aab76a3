//! Where each file of a backup goes, checked before anything is written.

use super::vmxedit::{read_vmx, VmxEdit};
use super::RestoreOptions;
use crate::dest::Destination;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use vmx::{Catalog, DatastorePath, DiskNode};

/// Something on the target that exists already.
#[derive(Debug, Clone)]
pub(super) struct Conflict {
    /// For messages and prompts: `file /ds/vm/vm.vmx` or `VM [ds] vm/vm.vmx (moref 16)`.
    pub what: String,
    /// Keep it (skip restoring over it).
    pub keep: bool,
}

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

/// The whole restore, decided.
#[derive(Debug)]
pub(super) struct Plan {
    /// The .vmx's datastore path and file.
    pub vmx: DatastorePath,
    pub vmx_path: PathBuf,
    /// The restored .vmx's text.
    pub vmx_text: String,
    /// The VM's display name (from the .vmx).
    pub vm_name: String,
    /// Folders to create, outermost first.
    pub dirs: Vec<PathBuf>,
    /// Items with the index of their conflict, if any.
    pub items: Vec<(Item, Option<usize>)>,
    /// The .vmx's own conflict.
    pub vmx_conflict: Option<usize>,
    /// The VM folder and pool to register in (normalised).
    pub folder: String,
    pub pool: String,
    /// An existing registration of the same .vmx, with its conflict.
    pub registered: Option<(host::VmRef, usize)>,
    pub conflicts: Vec<Conflict>,
    /// Things to tell the user (e.g. a missing RDM device).
    pub notes: Vec<String>,
}

impl Plan {
    pub(super) fn conflicts_mut(&mut self) -> impl Iterator<Item = &mut Conflict> {
        self.conflicts.iter_mut()
    }

    pub(super) fn kept(&self, conflict: Option<usize>) -> bool {
        conflict.is_some_and(|i| self.conflicts[i].keep)
    }

    fn conflict_if(&mut self, exists: bool, what: String) -> Option<usize> {
        exists.then(|| {
            self.conflicts.push(Conflict { what, keep: false });
            self.conflicts.len() - 1
        })
    }
}

/// Decide where everything goes. Writes nothing.
pub(super) fn plan(
    host: &host::Host,
    src: &dyn Destination,
    catalog: &Catalog,
    opts: &RestoreOptions,
) -> Result<Plan> {
    let location = src.location();
    let bad = |reason: String| Error::BadCatalog {
        location: location.clone(),
        reason,
    };
    let place = opts.alternate_catalog.as_ref().unwrap_or(catalog);
    let vmx_dp = place
        .config_vmx
        .clone()
        .ok_or_else(|| bad("no config.vmx entry".into()))?;
    let vmx_file = vmx_dp
        .file_name()
        .filter(|n| n.ends_with(".vmx"))
        .ok_or_else(|| {
            Error::unsafe_path(
                "config.vmx",
                vmx_dp.to_string(),
                "does not name a .vmx file",
            )
        })?;
    let new_stem = vmx_file.trim_end_matches(".vmx").to_owned();
    let vmx_path = confine(host, &vmx_dp, "config.vmx")?;
    let vm_dir = vmx_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let vm_dir_dp = vmx_dp
        .parent()
        .ok_or_else(|| bad("config.vmx has no folder".into()))?;

    // The .vmx in the backup, by its original name.
    let backup_vmx = catalog
        .config_vmx
        .as_ref()
        .and_then(|p| p.file_name().map(str::to_owned))
        .or_else(|| {
            catalog
                .files
                .iter()
                .find(|f| f.name.ends_with(".vmx"))
                .map(|f| f.name.clone())
        })
        .filter(|n| catalog.file(n).is_some())
        .ok_or_else(|| bad("the backup holds no .vmx file".into()))?;
    let old_stem = backup_vmx.trim_end_matches(".vmx").to_owned();
    let mut config = read_vmx(src, &backup_vmx)?;
    let vm_name = config
        .display_name()
        .map(str::to_owned)
        .unwrap_or_else(|| new_stem.clone());

    let folder = host.container(
        host::ContainerKind::Folder,
        place.folder_path.as_deref().unwrap_or("/"),
    )?;
    let pool = host.container(
        host::ContainerKind::Pool,
        place.resource_pool.as_deref().unwrap_or("/"),
    )?;
    let suspend_dir = dir_of(
        host,
        place.config_suspend_dir.as_ref(),
        &vm_dir,
        "config.suspenddir",
    )?;
    let log_dir = dir_of(
        host,
        place.config_log_dir.as_ref(),
        &vm_dir,
        "config.logdir",
    )?;

    let mut plan = Plan {
        vmx: vmx_dp.clone(),
        vmx_path: vmx_path.clone(),
        vmx_text: String::new(),
        vm_name,
        dirs: vec![vm_dir.clone()],
        items: Vec::new(),
        vmx_conflict: None,
        folder,
        pool,
        registered: None,
        conflicts: Vec::new(),
        notes: Vec::new(),
    };
    for d in [&suspend_dir, &log_dir] {
        if !plan.dirs.contains(d) {
            plan.dirs.push(d.clone());
        }
    }
    if suspend_dir != vm_dir {
        if let Some(dp) = &place.config_suspend_dir {
            config
                .dict_set("suspend.Directory", &dp.to_string())
                .map_err(|e| Error::dict(&vmx_path, e))?;
        }
    }

    plan_disks(
        host,
        catalog,
        place,
        &vm_dir,
        &vm_dir_dp,
        &mut config,
        &mut plan,
        opts,
    )?;
    let disk_files: Vec<&str> = catalog
        .disks
        .iter()
        .filter_map(|d| d.filename.as_deref())
        .collect();
    let nvram_name = config
        .nvram()
        .and_then(|n| n.rsplit('/').next())
        .map(str::to_owned);
    for f in &catalog.files {
        if f.name == backup_vmx || is_disk_file(&f.name, &disk_files) {
            continue;
        }
        if f.name.contains('/') {
            return Err(Error::unsafe_path(
                "file name",
                f.name.clone(),
                "would leave the VM folder",
            ));
        }
        let (target, strip) = if f.name == format!("{old_stem}.vmsd") {
            (vm_dir.join(format!("{new_stem}.vmsd")), true)
        } else if f.name.ends_with(".vmss") {
            // The state file follows the .vmx's new name (`<stem>.vmss` is where a
            // resume looks for it), and so does a `checkpoint.vmState` naming it.
            let renamed = match f.name.strip_prefix(old_stem.as_str()) {
                Some(rest) if rest == ".vmss" || rest.starts_with('-') => {
                    format!("{new_stem}{rest}")
                }
                _ => f.name.clone(),
            };
            let names_it = config
                .get("checkpoint.vmState")
                .is_some_and(|v| v.rsplit(['/', ' ']).next() == Some(f.name.as_str()));
            if names_it {
                let value = match &place.config_suspend_dir {
                    Some(dp) if suspend_dir != vm_dir => dp
                        .join(&renamed)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|_| renamed.clone()),
                    _ => renamed.clone(),
                };
                config
                    .dict_set("checkpoint.vmState", &value)
                    .map_err(|e| Error::dict(&vmx_path, e))?;
            }
            (suspend_dir.join(renamed), false)
        } else if f.name.starts_with("vmware") && f.name.ends_with(".log") {
            (log_dir.join(&f.name), false)
        } else {
            (vm_dir.join(&f.name), false)
        };
        if nvram_name.as_deref() == Some(f.name.as_str()) {
            config
                .set_nvram(&f.name)
                .map_err(|e| Error::dict(&vmx_path, e))?;
        }
        let c = plan.conflict_if(
            target.symlink_metadata().is_ok(),
            format!("file {}", target.display()),
        );
        plan.items.push((
            Item::File {
                from: f.name.clone(),
                target,
                strip_snapshots: strip,
            },
            c,
        ));
    }
    plan.vmx_conflict = plan.conflict_if(
        vmx_path.symlink_metadata().is_ok(),
        format!("file {}", vmx_path.display()),
    );
    plan.vmx_text = config.to_string();
    let mut targets: Vec<&Path> = plan.items.iter().map(|(item, _)| item.target()).collect();
    targets.push(&vmx_path);
    targets.sort();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("two entries restore to {}", w[0].display())));
    }
    for (moref, entry) in host.entries() {
        let same = entry
            .vmx
            .parse::<DatastorePath>()
            .ok()
            .and_then(|dp| host.resolve(&dp).ok())
            .is_some_and(|p| {
                let canon = |q: &Path| std::fs::canonicalize(q).ok();
                p == vmx_path || (p.exists() && canon(&p) == canon(&vmx_path))
            });
        if same {
            let c = plan.conflict_if(true, format!("VM {} (moref {moref}) registered", entry.vmx));
            plan.registered = c.map(|c| (moref, c));
            break;
        }
    }
    Ok(plan)
}

#[allow(clippy::too_many_arguments)]
fn plan_disks(
    host: &host::Host,
    catalog: &Catalog,
    place: &Catalog,
    vm_dir: &Path,
    vm_dir_dp: &DatastorePath,
    config: &mut VmxEdit,
    plan: &mut Plan,
    opts: &RestoreOptions,
) -> Result<()> {
    for disk in &catalog.disks {
        let placed = place
            .disks
            .iter()
            .find(|d| d.node == disk.node)
            .unwrap_or(disk);
        let target_dp = match &placed.diskname {
            Some(dp) => dp.clone(),
            None => {
                let from = disk.filename.as_deref().unwrap_or("disk.vmdk");
                let name = from.splitn(4, '-').nth(3).unwrap_or(from);
                vm_dir_dp
                    .join(name)
                    .map_err(|e| Error::unsafe_path("disk file name", from, e.to_string()))?
            }
        };
        let what = format!("disk.{}.diskname", disk.node);
        if !target_dp.file_name().is_some_and(|n| n.ends_with(".vmdk")) {
            return Err(Error::unsafe_path(
                what,
                target_dp.to_string(),
                "does not name a .vmdk file",
            ));
        }
        let target = confine(host, &target_dp, &what)?;
        let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
        if !plan.dirs.contains(&dir) {
            plan.dirs.push(dir.clone());
        }
        let reference = if dir == vm_dir {
            target_dp.file_name().unwrap_or_default().to_owned()
        } else {
            target_dp.to_string()
        };
        config
            .set_disk_file(disk.node, &reference)
            .map_err(|e| Error::dict("restored .vmx", e))?;
        let exists = disk_exists(&target);
        if disk.backed_up {
            let from = disk.filename.clone().ok_or_else(|| Error::BadCatalog {
                location: "catalog".into(),
                reason: format!("disk {} has no filename", disk.node),
            })?;
            let format = restore_format(opts, disk.format.as_deref(), &disk.node, &mut plan.notes);
            let c = plan.conflict_if(exists, format!("disk {}", target.display()));
            plan.items.push((
                Item::Disk {
                    from,
                    target,
                    format,
                },
                c,
            ));
        } else {
            match disk.rdm_device.as_deref().map(PathBuf::from) {
                Some(device) if device.exists() => {
                    let c = plan.conflict_if(exists, format!("disk {}", target.display()));
                    plan.items.push((Item::Rdm { device, target }, c));
                }
                device => plan.notes.push(format!(
                    "{}: was not backed up ({}); its device {} is not present, so the mapping is not recreated",
                    disk.node,
                    disk.reason.as_deref().unwrap_or("skipped"),
                    device.map(|d| d.display().to_string()).unwrap_or_else(|| "(unknown)".into())
                )),
            }
        }
    }
    Ok(())
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

/// Whether `name` is a disk's descriptor or one of its extents (`x.vmdk`, `x-s001.vmdk`).
fn is_disk_file(name: &str, disks: &[&str]) -> bool {
    disks.iter().any(|d| {
        let stem = d.trim_end_matches(".vmdk");
        name == *d || (name.starts_with(&format!("{stem}-")) && name.ends_with(".vmdk"))
    })
}

/// A folder entry of the catalog (or the VM folder when absent), confined.
fn dir_of(
    host: &host::Host,
    dp: Option<&DatastorePath>,
    vm_dir: &Path,
    what: &str,
) -> Result<PathBuf> {
    match dp {
        Some(dp) => confine(host, dp, what),
        None => Ok(vm_dir.to_path_buf()),
    }
}

/// The file a datastore path names, refusing one that leaves its datastore through a
/// symbolic link (`..` and absolute paths are refused by [`DatastorePath`] already).
pub(super) fn confine(host: &host::Host, dp: &DatastorePath, what: &str) -> Result<PathBuf> {
    let ds = host.datastore(dp.datastore())?;
    let root =
        std::fs::canonicalize(&ds.path).map_err(|e| Error::io(&ds.path, "open datastore", e))?;
    let path = host.resolve(dp)?;
    let mut existing = path.as_path();
    while existing.symlink_metadata().is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let canon = std::fs::canonicalize(existing).map_err(|e| Error::io(existing, "resolve", e))?;
    if !canon.starts_with(&root) {
        return Err(Error::unsafe_path(
            what,
            dp.to_string(),
            format!("leaves datastore {}", dp.datastore()),
        ));
    }
    match path.strip_prefix(existing) {
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(canon.join(rest)),
        _ => Ok(canon),
    }
}
