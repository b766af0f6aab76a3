//! Writing a decided restore: disks, files, the .vmx last, then registration.

use super::plan::{Item, Plan};
use super::RestoreReport;
use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Carry out `plan`.
pub(super) fn apply(
    host: &mut host::Host,
    src: &dyn Destination,
    plan: &Plan,
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    let Some(src_dir) = src.local_dir().map(Path::to_path_buf) else {
        return Err(Error::UnsupportedDestination {
            spec: src.location(),
            reason: "disks can only be restored from a local folder in this build".into(),
        });
    };
    for note in &plan.notes {
        obs.event(&Event::Warning(note.clone()));
    }
    for dir in &plan.dirs {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create folder", e))?;
    }
    let mut written = Vec::new();
    let mut kept = Vec::new();
    for (item, conflict) in &plan.items {
        if plan.kept(*conflict) {
            kept.push(
                conflict
                    .map(|c| plan.conflicts[c].what.clone())
                    .unwrap_or_default(),
            );
            continue;
        }
        match item {
            Item::Disk {
                from,
                target,
                format,
                ..
            } => {
                restore_disk(&src_dir.join(from), target, format, obs)?;
                written.push(target.clone());
            }
            Item::Rdm { device, target, .. } => {
                replace_disk(target, |tmp| {
                    let spec =
                        vmdk::CreateSpec::new(0, vmdk::DiskFormat::RdmPassthrough(device.clone()));
                    Ok(vmdk::create(tmp, &spec)?)
                })?;
                obs.event(&Event::RdmRecreated {
                    path: target.clone(),
                    device: device.clone(),
                });
                written.push(target.clone());
            }
            Item::File {
                from,
                target,
                strip_snapshots,
            } => {
                let size_bytes = copy_file(src, from, target, *strip_snapshots)?;
                obs.event(&Event::FileCopied {
                    name: from.clone(),
                    size_bytes,
                });
                written.push(target.clone());
            }
        }
    }
    if plan.kept(plan.vmx_conflict) {
        kept.push(format!("file {}", plan.vmx_path.display()));
    } else {
        crate::fsutil::write_atomic(&plan.vmx_path, plan.vmx_text.as_bytes())?;
        written.push(plan.vmx_path.clone());
    }
    let moref = register(host, plan, &mut kept)?;
    Ok(RestoreReport {
        vm: plan.vm_name.clone(),
        vmx: plan.vmx.clone(),
        vmx_path: plan.vmx_path.clone(),
        moref,
        written,
        kept,
    })
}

fn register(
    host: &mut host::Host,
    plan: &Plan,
    kept: &mut Vec<String>,
) -> Result<Option<host::VmRef>> {
    if let Some((moref, c)) = plan.registered {
        if plan.conflicts[c].keep {
            kept.push(plan.conflicts[c].what.clone());
            return Ok(None);
        }
        host.unregister_vm(moref)?;
    }
    let vm = host.register_vm(&plan.vmx, Some(&plan.folder), Some(&plan.pool))?;
    Ok(Some(vm.moref))
}

/// Convert the backup disk `from` into `target` with `format`, under a temporary name.
fn restore_disk(
    from: &Path,
    target: &Path,
    format: &vmdk::DiskFormat,
    obs: &mut dyn Observer,
) -> Result<()> {
    let mut src = vmdk::Disk::open(from, &vmdk::OpenOptions::read_only())?;
    let adapter = src.links()[0]
        .descriptor()
        .ddb_value("ddb.adapterType")
        .and_then(|a| vmdk::AdapterType::parse(a).ok())
        .unwrap_or_default();
    let spec = vmdk::CreateSpec {
        adapter,
        ..vmdk::CreateSpec::new(0, format.clone())
    };
    replace_disk(target, |tmp| {
        crate::export::convert_observed(&mut src, tmp, target, &spec, obs, &format.name())
    })
}

/// Make a disk at a temporary name beside `target` with `make`, then put it in place of
/// whatever disk is at `target`.
fn replace_disk(target: &Path, make: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_disk_name(target)?;
    remove_disk(&tmp)?;
    if let Err(e) = make(&tmp) {
        let _ = remove_disk(&tmp);
        return Err(e);
    }
    remove_disk(target)?;
    vmdk::rename(&tmp, target)?;
    Ok(())
}

/// `.<stem>.vcb-restore.vmdk` beside `target`: hidden, and its extents are renamed with it.
fn temp_disk_name(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name.strip_suffix(".vmdk").unwrap_or(name);
    Ok(target.with_file_name(format!(".{stem}.vcb-restore.vmdk")))
}

/// Remove a disk and its extents; a broken descriptor still has its file and the
/// conventional flat extent removed.
fn remove_disk(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    if vmdk::delete(path).is_ok() {
        return Ok(());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name.strip_suffix(".vmdk").unwrap_or(name);
    for f in [
        path.to_path_buf(),
        path.with_file_name(format!("{stem}-flat.vmdk")),
    ] {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&f, "remove", e)),
        }
    }
    Ok(())
}

/// Copy the backup file `from` to `target` atomically, streaming it (a suspended state
/// can be gigabytes); a .vmsd loses its snapshots. Returns the bytes written.
fn copy_file(
    src: &dyn Destination,
    from: &str,
    target: &Path,
    strip_snapshots: bool,
) -> Result<u64> {
    let mut reader = src.get(from)?;
    let what = format!("{}/{from}", src.location());
    if strip_snapshots {
        let mut data = Vec::new();
        reader
            .take(u64::try_from(vmx::MAX_INPUT_BYTES).unwrap_or(u64::MAX))
            .read_to_end(&mut data)
            .map_err(|e| Error::io(&what, "read", e))?;
        let data = without_snapshots(&data, target)?;
        crate::fsutil::write_atomic(target, &data)?;
        return Ok(data.len() as u64);
    }
    let mut copied = 0;
    crate::fsutil::write_atomic_with(target, false, |file| {
        copied = std::io::copy(&mut reader, file).map_err(|e| Error::io(&what, "copy", e))?;
        Ok(())
    })?;
    Ok(copied)
}

/// A .vmsd with its snapshot entries removed (other keys kept).
fn without_snapshots(data: &[u8], target: &Path) -> Result<Vec<u8>> {
    let dict = vmx::Dict::parse_bytes(data).map_err(|e| Error::dict(target, e))?;
    let mut db = vmx::SnapshotDb::from_dict(&dict).map_err(|e| Error::dict(target, e))?;
    let uids: Vec<u64> = db.snapshots().iter().map(|s| s.uid).collect();
    for uid in uids.into_iter().rev() {
        let _ = db.remove(uid);
    }
    let _ = db.set_current(None);
    let out = db.to_dict().map_err(|e| Error::dict(target, e))?;
    Ok(out.to_string().into_bytes())
}
