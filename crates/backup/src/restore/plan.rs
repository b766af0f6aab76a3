//! Where each file of a backup goes, checked before anything is written.
//!
//! Everything named by the catalog (or an alternate catalog) and by the backup's .vmx
//! is untrusted. Refused here, before the first write:
//! - a target outside its datastore (through `..`, an absolute path or a symbolic link:
//!   [`host::Confined`]);
//! - a target that belongs to another registered VM ([`Owned`]): its folder, or a file
//!   its .vmx or .vmsd names (a linked clone's shared base included);
//! - a disk node in the backup's .vmx that the catalog does not list;
//! - `.vcb-*` names, hidden names and the catalog's own name ([`check_reserved`]);
//! - a file name in the restored .vmx (serial files, NVRAM, suspend folder...) that
//!   leads outside the datastores or into another VM's files; the runtime's own
//!   `vcb.*` keys are dropped instead, with a note.

use super::guard::{is_path_key, is_runtime_key, Owned};
use super::verify::RestoreSource;
use super::vmxedit::{read_vmx, VmxEdit};
use super::RestoreOptions;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use vmx::{Catalog, DatastorePath};

pub(super) use super::plan_disks::Item;

/// Something on the target that exists already.
#[derive(Debug, Clone)]
pub(super) struct Conflict {
    /// For messages and prompts: `file /ds/vm/vm.vmx` or `VM [ds] vm/vm.vmx (moref 16)`.
    pub what: String,
    /// Keep it (skip restoring over it).
    pub keep: bool,
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
    /// Raw devices the restore maps (listed to the user before anything is written).
    pub rdm_devices: Vec<PathBuf>,
    /// Things to tell the user (e.g. a missing RDM device).
    pub notes: Vec<String>,
    /// What other registered VMs own.
    pub owned: Owned,
}

impl Plan {
    pub(super) fn conflicts_mut(&mut self) -> impl Iterator<Item = &mut Conflict> {
        self.conflicts.iter_mut()
    }

    pub(super) fn kept(&self, conflict: Option<usize>) -> bool {
        conflict.is_some_and(|i| self.conflicts[i].keep)
    }

    pub(super) fn conflict_if(&mut self, exists: bool, what: String) -> Option<usize> {
        exists.then(|| {
            self.conflicts.push(Conflict { what, keep: false });
            self.conflicts.len() - 1
        })
    }
}

/// Names a backup may not hold: hidden files (vcb's control files are all `.vcb-*`, and
/// staged files are hidden) and the catalog's own name.
///
/// # Errors
/// [`Error::UnsafePath`].
pub(crate) fn check_reserved(name: &str) -> Result<()> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.starts_with('.') || name == crate::dest::CATALOG_NAME {
        return Err(Error::unsafe_path(
            "backup file name",
            name,
            "is reserved (hidden and vcb control files are never restored)",
        ));
    }
    Ok(())
}

/// Where the catalog entries say the VM goes.
struct Place {
    vmx_dp: DatastorePath,
    vmx_path: PathBuf,
    vm_dir: PathBuf,
    vm_dir_dp: DatastorePath,
    new_stem: String,
}

/// Decide where everything goes. Writes nothing.
pub(super) fn plan(
    host: &host::Host,
    files: &dyn RestoreSource,
    catalog: &Catalog,
    opts: &RestoreOptions,
) -> Result<Plan> {
    let location = files.location();
    let bad = |reason: String| Error::BadCatalog {
        location: location.clone(),
        reason,
    };
    let place = opts.alternate_catalog.as_ref().unwrap_or(catalog);
    let where_ = locate(host, place, &bad)?;
    let backup_vmx =
        backup_vmx_name(catalog).ok_or_else(|| bad("the backup holds no .vmx file".into()))?;
    let old_stem = backup_vmx.trim_end_matches(".vmx").to_owned();
    let mut config = read_vmx(files, &backup_vmx)?;
    refuse_unlisted_disks(&config, catalog, &location)?;
    let vm_name = config
        .display_name()
        .map(str::to_owned)
        .unwrap_or_else(|| where_.new_stem.clone());
    let registered = registered_as(host, &where_.vmx_path);
    let owned = Owned::of(host, registered);
    let mut plan = Plan {
        vmx: where_.vmx_dp.clone(),
        vmx_path: where_.vmx_path.clone(),
        vmx_text: String::new(),
        vm_name,
        dirs: vec![where_.vm_dir.clone()],
        items: Vec::new(),
        vmx_conflict: None,
        folder: host.container(
            host::ContainerKind::Folder,
            place.folder_path.as_deref().unwrap_or("/"),
        )?,
        pool: host.container(
            host::ContainerKind::Pool,
            place.resource_pool.as_deref().unwrap_or("/"),
        )?,
        registered: None,
        conflicts: Vec::new(),
        rdm_devices: Vec::new(),
        notes: Vec::new(),
        owned: Owned::default(),
    };
    let suspend_dir = dir_of(
        host,
        place.config_suspend_dir.as_ref(),
        &where_.vm_dir,
        "config.suspenddir",
    )?;
    let log_dir = dir_of(
        host,
        place.config_log_dir.as_ref(),
        &where_.vm_dir,
        "config.logdir",
    )?;
    for d in [&suspend_dir, &log_dir] {
        if !plan.dirs.contains(d) {
            plan.dirs.push(d.clone());
        }
    }
    if suspend_dir != where_.vm_dir {
        if let Some(dp) = &place.config_suspend_dir {
            config
                .dict_set("suspend.Directory", &dp.to_string())
                .map_err(|e| Error::dict(&where_.vmx_path, e))?;
        }
    }
    let disks = super::plan_disks::DiskTargets {
        host,
        catalog,
        place,
        vm_dir: &where_.vm_dir,
        vm_dir_dp: &where_.vm_dir_dp,
        opts,
    };
    disks.plan(&mut config, &mut plan)?;
    let stems = (old_stem.as_str(), where_.new_stem.as_str());
    plan_files(
        catalog,
        place,
        &backup_vmx,
        stems,
        (&where_.vm_dir, &suspend_dir, &log_dir),
        &mut config,
        &mut plan,
    )?;
    check_path_keys(host, &owned, &where_.vm_dir, &mut config, &mut plan)?;
    plan.vmx_conflict = plan.conflict_if(
        where_.vmx_path.symlink_metadata().is_ok(),
        format!("file {}", where_.vmx_path.display()),
    );
    plan.vmx_text = config.to_string();
    check_targets(&plan, &owned, &bad)?;
    plan.owned = owned;
    if let Some(moref) = registered {
        let vmx = host
            .entries()
            .into_iter()
            .find(|(m, _)| *m == moref)
            .map(|(_, e)| e.vmx.clone())
            .unwrap_or_default();
        let c = plan.conflict_if(true, format!("VM {vmx} (moref {moref}) registered"));
        plan.registered = c.map(|c| (moref, c));
    }
    Ok(plan)
}

/// The .vmx's place from the catalog, confined.
fn locate(host: &host::Host, place: &Catalog, bad: &dyn Fn(String) -> Error) -> Result<Place> {
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
    check_reserved(vmx_file)?;
    let vmx_path = confine(host, &vmx_dp, "config.vmx")?;
    let vm_dir = vmx_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let vm_dir_dp = vmx_dp
        .parent()
        .ok_or_else(|| bad("config.vmx has no folder".into()))?;
    Ok(Place {
        vmx_dp,
        vmx_path,
        vm_dir,
        vm_dir_dp,
        new_stem,
    })
}

/// The .vmx in the backup, by its original name.
fn backup_vmx_name(catalog: &Catalog) -> Option<String> {
    catalog
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
}

/// The registered VM whose .vmx is `vmx_path`, if any.
fn registered_as(host: &host::Host, vmx_path: &Path) -> Option<host::VmRef> {
    let canon = |q: &Path| std::fs::canonicalize(q).ok();
    host.entries().into_iter().find_map(|(moref, entry)| {
        let p = entry
            .vmx
            .parse::<DatastorePath>()
            .ok()
            .and_then(|dp| host.resolve(&dp).ok())?;
        (p == vmx_path || (p.exists() && canon(&p) == canon(vmx_path))).then_some(moref)
    })
}

/// A backup's .vmx may attach only the disks its catalog lists (an unlisted node would
/// point the restored VM at whatever file the .vmx names).
fn refuse_unlisted_disks(config: &VmxEdit, catalog: &Catalog, location: &str) -> Result<()> {
    for d in config.disks() {
        if !catalog.disks.iter().any(|c| c.node == d.node) {
            return Err(Error::BadCatalog {
                location: location.to_owned(),
                reason: format!(
                    "the backup's .vmx attaches disk {} ({:?}) that the catalog does not list (refused)",
                    d.node, d.file_name
                ),
            });
        }
    }
    Ok(())
}

/// The configuration files (everything but the .vmx and the disks).
fn plan_files(
    catalog: &Catalog,
    place: &Catalog,
    backup_vmx: &str,
    (old_stem, new_stem): (&str, &str),
    (vm_dir, suspend_dir, log_dir): (&Path, &Path, &Path),
    config: &mut VmxEdit,
    plan: &mut Plan,
) -> Result<()> {
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
        check_reserved(&f.name)?;
        if f.name.contains('/') {
            return Err(Error::unsafe_path(
                "file name",
                f.name.clone(),
                "would leave the VM folder",
            ));
        }
        let (target, strip) = if f.name == format!("{old_stem}.vmsd") {
            (vm_dir.join(format!("{new_stem}.vmsd")), true)
        } else if f.name == format!("{old_stem}.efivars.fd") {
            // The runtime finds the EFI variables by the .vmx's name.
            (vm_dir.join(format!("{new_stem}.efivars.fd")), false)
        } else if f.name.ends_with(".vmss") {
            (
                suspend_dir.join(suspend_target(
                    f,
                    place,
                    old_stem,
                    new_stem,
                    suspend_dir,
                    vm_dir,
                    config,
                )?),
                false,
            )
        } else if f.name.starts_with("vmware") && f.name.ends_with(".log") {
            (log_dir.join(&f.name), false)
        } else {
            (vm_dir.join(&f.name), false)
        };
        if nvram_name.as_deref() == Some(f.name.as_str()) {
            config
                .set_nvram(&f.name)
                .map_err(|e| Error::dict(vm_dir, e))?;
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
    Ok(())
}

/// The name a suspended state file gets: it follows the .vmx's new name (`<stem>.vmss`
/// is where a resume looks for it), and so does a `checkpoint.vmState` naming it.
fn suspend_target(
    f: &vmx::CatalogFile,
    place: &Catalog,
    old_stem: &str,
    new_stem: &str,
    suspend_dir: &Path,
    vm_dir: &Path,
    config: &mut VmxEdit,
) -> Result<String> {
    let renamed = match f.name.strip_prefix(old_stem) {
        Some(rest) if rest == ".vmss" || rest.starts_with('-') => format!("{new_stem}{rest}"),
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
            .map_err(|e| Error::dict(vm_dir, e))?;
    }
    Ok(renamed)
}

/// Every file name left in the restored .vmx (serial files, NVRAM, suspend folder, CD
/// images...) must lead inside the datastores and not into another VM's files; the
/// runtime's own `vcb.*` keys that do not are dropped.
fn check_path_keys(
    host: &host::Host,
    owned: &Owned,
    vm_dir: &Path,
    config: &mut VmxEdit,
    plan: &mut Plan,
) -> Result<()> {
    let confined = host.confined();
    let disks: Vec<String> = config
        .disks()
        .iter()
        .map(|d| format!("{}.filename", d.node))
        .collect();
    for (key, value) in config.entries() {
        let lower = key.to_ascii_lowercase();
        if !is_path_key(&key) || value.is_empty() || disks.contains(&lower) {
            continue;
        }
        let refused = match confined.vm_file(vm_dir, &value) {
            Err(reason) => Some(reason),
            Ok(path) => owned
                .owner(&path)
                .map(|vm| format!("{value:?} belongs to registered VM {vm}")),
        };
        let Some(reason) = refused else { continue };
        if is_runtime_key(&key) {
            config.remove(&key);
            plan.notes
                .push(format!("{key} dropped from the restored .vmx: {reason}"));
        } else {
            return Err(Error::unsafe_path(
                format!("restored .vmx key {key}"),
                value,
                reason,
            ));
        }
    }
    Ok(())
}

/// Every place written must be free of other VMs, and no two entries may share one.
fn check_targets(plan: &Plan, owned: &Owned, bad: &dyn Fn(String) -> Error) -> Result<()> {
    owned.refuse("config.vmx", &plan.vmx_path)?;
    for dir in &plan.dirs {
        owned.refuse("folder", dir)?;
    }
    let mut targets: Vec<&Path> = plan.items.iter().map(|(item, _)| item.target()).collect();
    for t in &targets {
        owned.refuse("restore target", t)?;
    }
    targets.push(&plan.vmx_path);
    targets.sort();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("two entries restore to {}", w[0].display())));
    }
    Ok(())
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

/// The file a datastore path names, by the host's one confinement rule: inside its own
/// datastore after symbolic links are resolved.
pub(super) fn confine(host: &host::Host, dp: &DatastorePath, what: &str) -> Result<PathBuf> {
    host.confined()
        .datastore_path(dp)
        .map_err(|reason| Error::unsafe_path(what, dp.to_string(), reason))
}
