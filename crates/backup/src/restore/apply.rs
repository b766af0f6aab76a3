//! Writing a decided restore: every file staged beside its target under a hidden name,
//! then all of them swapped in under one journal, then the registration.
//!
//! The swap ([`fsio::swap`]) moves every old file aside, every staged file in, passes
//! its commit point and removes the old files; a process killed anywhere leaves either
//! the old VM or the new one once the next holder of the host lock recovers the journal
//! ([`host::Host::lock_host`]). A staging record written first lets that recovery also
//! remove what a restore killed while staging had written.

use super::plan::{Item, Plan};
use super::verify::RestoreSource;
use super::RestoreReport;
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Carry out `plan` with the host lock `lock` held. `replaced` are the files of the VM
/// being overwritten (they go in the same swap when nothing new takes their name).
pub(super) fn apply(
    host: &mut host::Host,
    lock: &host::HostLock,
    files: &dyn RestoreSource,
    plan: &Plan,
    replaced: &[PathBuf],
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    for device in &plan.rdm_devices {
        obs.event(&Event::Warning(format!(
            "the restored VM will map raw device {} (--allow-rdm)",
            device.display()
        )));
    }
    for note in &plan.notes {
        obs.event(&Event::Warning(note.clone()));
    }
    for dir in &plan.dirs {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create folder", e))?;
    }
    let (journal, record) = host.swap_journal(lock)?;
    let staged = stage_names(plan)?;
    let staged_vmx = fsio::temp_name(&plan.vmx_path, "vcb-new");
    let prefixes: Vec<PathBuf> = staged
        .iter()
        .flatten()
        .chain(std::iter::once(&staged_vmx))
        .map(|s| prefix_of(s))
        .collect();
    let staging = fsio::swap::Staging::begin(&record, &prefixes)?;
    let mut swap = fsio::swap::Swap::new(&journal);
    let staged_all =
        stage_all(plan, &staged, &staged_vmx, files, &mut swap, obs).inspect(|(_, written, _)| {
            remove_replaced(&mut swap, plan, replaced, written);
        });
    let (leftovers, written, mut kept) = match staged_all {
        Ok(done) => done,
        Err(e) => {
            // Nothing was swapped in: what was staged goes (the record lists it).
            let accept = |_: &Path| true;
            if let Err(c) = fsio::swap::recover_staging(&record, &accept) {
                obs.event(&Event::Warning(format!("removing staged files: {c}")));
            }
            return Err(e);
        }
    };
    swap.commit()?;
    for f in leftovers {
        remove_if_exists(&f)?;
    }
    staging.done()?;
    let moref = register(host, lock, plan, &mut kept)?;
    Ok(RestoreReport {
        vm: plan.vm_name.clone(),
        vmx: plan.vmx.clone(),
        vmx_path: plan.vmx_path.clone(),
        moref,
        written,
        kept,
    })
}

/// What staging produced: staged descriptors to delete after the swap, the targets
/// written, and the conflicts kept.
type Staged = (Vec<PathBuf>, Vec<PathBuf>, Vec<String>);

/// Writes every item under its staged name and adds it to `swap`; the .vmx last.
fn stage_all(
    plan: &Plan,
    staged: &[Option<PathBuf>],
    staged_vmx: &Path,
    files: &dyn RestoreSource,
    swap: &mut fsio::swap::Swap,
    obs: &mut dyn Observer,
) -> Result<Staged> {
    let mut leftovers = Vec::new();
    let mut written = Vec::new();
    let mut kept = Vec::new();
    for ((item, conflict), staged) in plan.items.iter().zip(staged) {
        if obs.cancelled() {
            return Err(Error::Cancelled);
        }
        let Some(staged) = staged else {
            kept.push(
                conflict
                    .map(|c| plan.conflicts[c].what.clone())
                    .unwrap_or_default(),
            );
            continue;
        };
        stage(item, staged, files, obs)?;
        match item {
            Item::Disk { target, .. } | Item::Rdm { target, .. } => {
                // Whatever tracked the disk being replaced describes other content.
                vmdk::ctk::forget(target)?;
                leftovers.extend(vmdk::replace::add_to_swap(swap, target, staged)?);
            }
            Item::File { target, .. } => {
                swap.replace(target, staged);
            }
        }
        written.push(item.target().to_path_buf());
    }
    if plan.kept(plan.vmx_conflict) {
        kept.push(format!("file {}", plan.vmx_path.display()));
    } else {
        write_new(staged_vmx, plan.vmx_text.as_bytes())?;
        swap.replace(&plan.vmx_path, staged_vmx);
        written.push(plan.vmx_path.clone());
    }
    Ok((leftovers, written, kept))
}

/// A staged name per item (`None` for a kept one), chosen before anything is written.
fn stage_names(plan: &Plan) -> Result<Vec<Option<PathBuf>>> {
    plan.items
        .iter()
        .map(|(item, conflict)| {
            if plan.kept(*conflict) {
                return Ok(None);
            }
            Ok(Some(match item {
                Item::Disk { target, .. } | Item::Rdm { target, .. } => {
                    vmdk::replace::staged_name(target)?
                }
                Item::File { target, .. } => fsio::temp_name(target, "vcb-new"),
            }))
        })
        .collect()
}

/// The staged name without its extension: a disk's extents share it.
fn prefix_of(staged: &Path) -> PathBuf {
    let name = staged
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    staged.with_file_name(name.strip_suffix(".vmdk").unwrap_or(name))
}

/// Writes `item` under its staged name.
fn stage(
    item: &Item,
    staged: &Path,
    files: &dyn RestoreSource,
    obs: &mut dyn Observer,
) -> Result<()> {
    match item {
        Item::Disk {
            from,
            target,
            format,
        } => stage_disk(files, from, staged, target, format, obs),
        Item::Rdm { device, target } => {
            let spec = vmdk::CreateSpec::new(0, vmdk::DiskFormat::RdmPassthrough(device.clone()));
            vmdk::create(staged, &spec)?;
            obs.event(&Event::RdmRecreated {
                path: target.clone(),
                device: device.clone(),
            });
            Ok(())
        }
        Item::File {
            from,
            strip_snapshots,
            ..
        } => {
            let size_bytes = copy_file(files, from, staged, *strip_snapshots)?;
            obs.event(&Event::FileCopied {
                name: from.clone(),
                size_bytes,
            });
            Ok(())
        }
    }
}

/// Converts the backup disk `from` (read only through the verified files) into
/// `staged` with `format`.
fn stage_disk(
    files: &dyn RestoreSource,
    from: &str,
    staged: &Path,
    target: &Path,
    format: &vmdk::DiskFormat,
    obs: &mut dyn Observer,
) -> Result<()> {
    let mut src = files.open_disk(from)?;
    let spec = vmdk::CreateSpec {
        adapter: src.adapter(),
        ..vmdk::CreateSpec::new(0, format.clone())
    };
    crate::export::convert_observed(&mut *src, staged, target, &spec, obs, &format.name())
}

/// The old VM's files that nothing restored replaces (redo logs, snapshot state, a
/// .vmsd the backup has none of) leave with the swap.
fn remove_replaced(
    swap: &mut fsio::swap::Swap,
    plan: &Plan,
    replaced: &[PathBuf],
    written: &[PathBuf],
) {
    let kept_any = plan.conflicts.iter().any(|c| c.keep);
    if kept_any {
        return;
    }
    for f in replaced {
        let taken = written.iter().any(|w| w == f || same_disk(w, f));
        if !taken && f.symlink_metadata().is_ok() {
            swap.remove(f);
        }
    }
}

/// True when `f` is one of the files of the disk restored at `target` (the swap of that
/// disk already takes care of it).
fn same_disk(target: &Path, f: &Path) -> bool {
    vmdk::link_files(target).is_ok_and(|files| files.iter().any(|x| x == f))
}

fn register(
    host: &mut host::Host,
    lock: &host::HostLock,
    plan: &Plan,
    kept: &mut Vec<String>,
) -> Result<Option<host::VmRef>> {
    if let Some((moref, c)) = plan.registered {
        if plan.conflicts[c].keep {
            kept.push(plan.conflicts[c].what.clone());
            return Ok(None);
        }
        // The same .vmx: the registration stays (one write, same moref), in its new
        // folder and pool.
        let vm = host.place_vm_locked(lock, moref, Some(&plan.folder), Some(&plan.pool))?;
        return Ok(Some(vm.moref));
    }
    let vm = host.register_vm_locked(lock, &plan.vmx, Some(&plan.folder), Some(&plan.pool))?;
    Ok(Some(vm.moref))
}

/// Creates `path` (which must not exist) with `data`, synced.
fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, "create", e))?;
    f.write_all(data).map_err(|e| Error::io(path, "write", e))?;
    f.sync_all().map_err(|e| Error::io(path, "fsync", e))
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, "remove", e)),
    }
}

/// Copies the verified backup file `from` to the new file `staged`, streaming it (a
/// suspended state can be gigabytes); a .vmsd loses its snapshots. Returns the bytes
/// written.
fn copy_file(
    files: &dyn RestoreSource,
    from: &str,
    staged: &Path,
    strip_snapshots: bool,
) -> Result<u64> {
    let mut reader = files.reader(from)?;
    let what = format!("{}/{from}", files.location());
    if strip_snapshots {
        let mut data = Vec::new();
        (&mut reader)
            .take(u64::try_from(vmx::MAX_INPUT_BYTES).unwrap_or(u64::MAX))
            .read_to_end(&mut data)
            .map_err(|e| Error::io(&what, "read", e))?;
        let data = without_snapshots(&data, staged)?;
        write_new(staged, &data)?;
        return Ok(data.len() as u64);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(staged)
        .map_err(|e| Error::io(staged, "create", e))?;
    let copied = std::io::copy(&mut reader, &mut f).map_err(|e| Error::io(&what, "copy", e))?;
    f.sync_all().map_err(|e| Error::io(staged, "fsync", e))?;
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
