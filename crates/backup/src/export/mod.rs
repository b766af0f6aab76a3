//! Full-VM backup (vcbMounter `-t fullvm`, `vcb backup`).
//!
//! Order of work, each step only when the previous one succeeded:
//!
//! 1. Read the VM and classify its disks. A physical-compatibility RDM stops the backup
//!    here unless [`BackupOptions::skip_physical_rdm`] is set.
//! 2. Create the destination folder (refused if it exists) and mark it incomplete.
//! 3. Run the pre-freeze hooks; a failing hook aborts (no snapshot exists yet).
//! 4. Lock the VM folder, commit what an interrupted backup left (a snapshot named
//!    [`BACKUP_SNAPSHOT_NAME`], redo logs no snapshot owns), and take the backup
//!    snapshot: the links below the new redo logs are now static. The guest is not
//!    quiesced (the runtime arrives with a later issue): the catalog says `quiesced= "no"`.
//! 5. Run the post-thaw hooks (a failure is a warning).
//! 6. Export the configuration files and every disk (compacted) from the static links.
//! 7. Remove the backup snapshot: its redo logs are committed back.
//! 8. Write the catalog (every file's size and SHA-256) last, remove the incomplete
//!    marker, and record the VM in the name cache.
//!
//! If the process dies anywhere, the VM keeps every byte (its writes went to the redo
//! logs), the next backup of the VM commits the leftover snapshot before anything else,
//! and the destination keeps its incomplete marker, so restore refuses it.

mod disks;
mod files;

pub(crate) use disks::convert_observed;
pub use disks::{DiskKind, DiskPlan, ExportFormat};

use crate::dest::{Destination, CATALOG_NAME};
use crate::error::{Error, Result};
use crate::hooks::{self, HookEnv, Stage};
use crate::observer::{Event, Observer};
use std::path::PathBuf;
use std::time::Duration;

/// The display name of the snapshot a backup takes; a leftover one is an interrupted
/// backup's and is committed by the next backup of the VM.
pub const BACKUP_SNAPSHOT_NAME: &str = host::snapshot::BACKUP_SNAPSHOT_NAME;

/// How to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Layout of exported disks (`-M`).
    pub format: ExportFormat,
    /// Back up the other disks of a VM with a physical-compatibility RDM, recording the
    /// RDM as not backed up (otherwise the backup stops before any snapshot).
    pub skip_physical_rdm: bool,
    /// The VM name cache to record the VM in (`VMNAMECACHE`, `-c`); `None`: the host's.
    pub name_cache: Option<PathBuf>,
    /// Written into the catalog's `tool version`.
    pub tool_version: String,
    /// Test hook: sleep this long after the snapshot was taken and the configuration
    /// files were exported, before the disks, so a test can kill the backup mid-export.
    pub pause_after_snapshot: Option<Duration>,
}

/// What a finished backup wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The VM's display name.
    pub vm: String,
    /// The destination.
    pub location: String,
    /// The catalog as written.
    pub catalog: vmx::Catalog,
    /// Bytes written into the backup.
    pub bytes_written: u64,
    /// Warnings (also sent to the observer).
    pub warnings: Vec<String>,
}

/// Back up the VM `vm` (display name or specifier, see [`host::Host::find_vm`]) into
/// `dest`, which must not exist yet.
///
/// # Errors
/// Lookup errors, [`Error::PhysicalRdm`], [`Error::DestinationExists`],
/// [`Error::HookFailed`], snapshot, disk and file errors. On error the VM is left as it
/// was (the backup snapshot removed) and a destination this call created is removed;
/// only a killed process leaves an incomplete destination behind.
pub fn backup_vm(
    host: &host::Host,
    vm: &str,
    dest: &mut dyn Destination,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let vm = host.find_vm(vm)?;
    let disks = plan_disks(host, &vm)?;
    if !opts.skip_physical_rdm {
        for d in &disks {
            if let DiskKind::PhysicalRdm { device } = &d.kind {
                return Err(Error::PhysicalRdm {
                    vm: vm.name(),
                    node: d.node.to_string(),
                    device: device.clone(),
                });
            }
        }
    }
    dest.create()?;
    // A staging folder (remote destinations) holds the converted disks until upload:
    // say up front when their full capacity might not fit.
    let capacity: u64 = disks
        .iter()
        .filter(|d| !matches!(d.kind, DiskKind::PhysicalRdm { .. }))
        .map(|d| d.capacity_bytes)
        .sum();
    if let Err(e) = dest.check_local_space(capacity) {
        obs.event(&Event::Warning(e.to_string()));
    }
    let result = run(host, &vm, &disks, dest, opts, obs);
    if result.is_err() {
        if let Err(e) = dest.discard() {
            obs.event(&Event::Warning(format!(
                "could not remove the incomplete backup {}: {e}",
                dest.location()
            )));
        }
    }
    result
}

/// Classify every disk of `vm`.
fn plan_disks(host: &host::Host, vm: &host::Vm) -> Result<Vec<DiskPlan>> {
    vm.disks(host)?
        .iter()
        .map(|d| disks::plan_disk(d.node, &d.path, d.independent))
        .collect()
}

fn run(
    host: &host::Host,
    vm: &host::Vm,
    disks: &[DiskPlan],
    dest: &mut dyn Destination,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<BackupReport> {
    let name = vm.name();
    let env = HookEnv {
        vm_name: name.clone(),
        vm_uuid: vm.uuid().map(|u| u.to_string()).unwrap_or_default(),
        vm_folder: vm.dir.clone(),
    };
    for hook in hooks::hooks_for(host.root(), &vm.dir, Stage::PreFreeze)? {
        hooks::run_hook(&hook, Stage::PreFreeze, &env)?;
        obs.event(&Event::HookRan {
            path: hook,
            stage: Stage::PreFreeze.as_str(),
        });
    }
    let mut locked = host.lock_vm(vm.moref, host::LockMode::Wait)?;
    consolidate_leftovers(&mut locked, obs)?;
    // Read under the lock, before the snapshot changes them.
    let snapshot_view = files::ConfigSnapshot::read(host, locked.vm())?;
    let created = locked.create_snapshot(
        BACKUP_SNAPSHOT_NAME,
        "vcb backup in progress; removed when it ends",
    )?;
    obs.event(&Event::SnapshotTaken { vm: name.clone() });
    let mut warnings = Vec::new();
    for hook in hooks::hooks_for(host.root(), &vm.dir, Stage::PostThaw)? {
        match hooks::run_hook(&hook, Stage::PostThaw, &env) {
            Ok(()) => obs.event(&Event::HookRan {
                path: hook,
                stage: Stage::PostThaw.as_str(),
            }),
            Err(e) => warn(obs, &mut warnings, e.to_string()),
        }
    }
    let exported = files::export_all(
        host,
        vm,
        &snapshot_view,
        &created,
        disks,
        dest,
        opts,
        obs,
        &mut warnings,
    );
    // The snapshot goes whatever happened to the export.
    let removed = locked.remove_snapshot(created.uid, &mut ());
    if let (Err(e), Err(_)) = (&removed, &exported) {
        let text =
            format!("could not remove the backup snapshot (the next backup commits it): {e}");
        warn(obs, &mut warnings, text);
    }
    let exported = exported?;
    removed?;
    obs.event(&Event::SnapshotRemoved { vm: name.clone() });
    drop(locked);
    let catalog = files::build_catalog(host, vm, &snapshot_view, disks, &exported, opts)?;
    let dict = catalog
        .to_dict()
        .map_err(|e| Error::dict(CATALOG_NAME, e))?;
    dest.flush_local()?;
    dest.put(CATALOG_NAME, &mut dict.to_string().as_bytes())?;
    dest.mark_complete()?;
    let cache = opts
        .name_cache
        .clone()
        .unwrap_or_else(|| host.name_cache_path().to_path_buf());
    if let Err(e) = host::namecache::record(&cache, &name, vm.uuid().as_ref(), vm.guest_ip()) {
        warn(
            obs,
            &mut warnings,
            format!("VM name cache {}: {e}", cache.display()),
        );
    }
    let bytes_written = exported.iter().map(|f| f.size_bytes).sum();
    Ok(BackupReport {
        vm: name,
        location: dest.location(),
        catalog,
        bytes_written,
        warnings,
    })
}

/// Commit what an interrupted backup left: its snapshot, and redo logs no snapshot owns.
fn consolidate_leftovers(locked: &mut host::LockedVm<'_>, obs: &mut dyn Observer) -> Result<()> {
    let leftovers: Vec<u64> = locked
        .snapshots()
        .snapshots()
        .iter()
        .filter(|s| s.display_name == BACKUP_SNAPSHOT_NAME)
        .map(|s| s.uid)
        .collect();
    let found = !leftovers.is_empty();
    for uid in leftovers {
        locked.remove_snapshot(uid, &mut ())?;
    }
    let cleanup = locked.consolidate(&mut ())?;
    if found || !cleanup.merged.is_empty() || !cleanup.deleted.is_empty() {
        obs.event(&Event::Consolidated {
            vm: locked.vm().name(),
        });
    }
    Ok(())
}

fn warn(obs: &mut dyn Observer, warnings: &mut Vec<String>, text: String) {
    obs.event(&Event::Warning(text.clone()));
    warnings.push(text);
}
