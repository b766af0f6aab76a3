//! Full-VM restore (vcbRestore, `vcb restore`).
//!
//! 1. Refuse an incomplete backup; read its catalog.
//! 2. Verify every file's size and SHA-256 against the catalog, keeping each verified
//!    file open ([`verify_open`]): what is restored is what was checked, and a disk
//!    descriptor in the backup can reach no other file.
//! 3. Take the host lock (recovering a restore a killed process left), re-read the
//!    inventory, and plan: where each file and disk goes, from the catalog or an
//!    alternate catalog (`-a`). Every path is untrusted (see the `plan` module): names
//!    leaving their datastore, reaching another registered VM's files, reserved names
//!    and unlisted disks are refused here, before anything is written.
//! 4. A registered VM being replaced is locked (its own lock, after the host lock) and
//!    must be powered off and not suspended (`power_off` powers it off first).
//! 5. Resolve conflicts (existing files, an already registered VM) by the
//!    [`ConflictPolicy`]; `abort` and an unanswerable `prompt` stop here.
//! 6. Stage every file beside its target under a hidden name, swap all of them in
//!    under one journal, then register the VM (see the `apply` module): a restore
//!    killed at any instant leaves the old VM or the new one, never a mix.

mod apply;
mod guard;
mod plan;
mod plan_disks;
mod repo_source;
mod verify;
mod vmxedit;

pub use repo_source::{restore_point, RepoSource};
pub use verify::{
    parse_catalog, read_catalog, verify, verify_open, verify_open_chain, PositionalReader,
    RestoreSource, VerifiedFiles,
};

use crate::dest::Destination;
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::path::PathBuf;

/// What to do when a file to restore exists or the VM is registered already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Ask (through [`Observer::ask`]); fail when nobody can answer.
    #[default]
    Prompt,
    /// Replace what exists.
    Overwrite,
    /// Keep what exists and skip it.
    Keep,
    /// Stop before changing anything.
    Abort,
}

impl std::str::FromStr for ConflictPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "prompt" => Ok(ConflictPolicy::Prompt),
            "overwrite" => Ok(ConflictPolicy::Overwrite),
            "keep" => Ok(ConflictPolicy::Keep),
            "abort" => Ok(ConflictPolicy::Abort),
            _ => Err(format!(
                "unknown conflict policy {s:?} (prompt, overwrite, keep, abort)"
            )),
        }
    }
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// An edited copy of the catalog saying where to restore (`-a`).
    pub alternate_catalog: Option<vmx::Catalog>,
    /// What to do about conflicts.
    pub policy: ConflictPolicy,
    /// Provisioning for every restored disk instead of the catalog's (thin,
    /// zeroedthick, eagerzeroedthick).
    pub disk_format: Option<vmdk::DiskFormat>,
    /// Recreate raw device mappings the catalog names (`--allow-rdm`); without it they
    /// are listed and left out.
    pub allow_rdm: bool,
    /// Power off (or discard the suspended state of) a registered VM being replaced,
    /// instead of refusing it.
    pub power_off: bool,
    /// Wait for a backup or snapshot operation holding the replaced VM's lock instead
    /// of refusing at once.
    pub wait: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The VM's display name (from its .vmx).
    pub vm: String,
    /// The restored .vmx.
    pub vmx: vmx::DatastorePath,
    /// The .vmx file.
    pub vmx_path: PathBuf,
    /// The VM's moref after registration (`None` when an existing registration was kept).
    pub moref: Option<host::VmRef>,
    /// Files and disks written.
    pub written: Vec<PathBuf>,
    /// Existing files or registrations kept.
    pub kept: Vec<String>,
}

/// Restore the backup in `src` onto `host`.
///
/// # Errors
/// [`Error::IncompleteBackup`], [`Error::Tampered`], [`Error::MissingFile`],
/// [`Error::UnsafePath`], [`Error::BadCatalog`], [`Error::ConflictAbort`],
/// [`Error::CannotPrompt`], [`Error::TargetRunning`], host, disk and file errors.
/// Everything up to the conflict decisions happens before anything is written.
pub fn restore_vm(
    host: &mut host::Host,
    src: &dyn Destination,
    opts: &RestoreOptions,
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    let catalog = read_catalog(src)?;
    let files = verify_open_chain(src, &catalog)?;
    restore_from(host, &files, &catalog, opts, obs)
}

/// Restore from `files` (verified already) whose catalog is `catalog`: the part of
/// [`restore_vm`] after verification, shared by folder and repository restores.
///
/// # Errors
/// As for [`restore_vm`].
pub fn restore_from(
    host: &mut host::Host,
    files: &dyn RestoreSource,
    catalog: &vmx::Catalog,
    opts: &RestoreOptions,
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    obs.event(&Event::Verified {
        files: files.count(),
    });
    let lock = host.lock_host(host::LockMode::Wait)?;
    host.reload()?;
    let mut plan = plan::plan(host, files, catalog, opts)?;
    // The VM being replaced stays locked until it is registered again.
    let me = host.clone();
    let mut target = match plan.registered {
        Some((moref, _)) => Some(lock_target(&me, moref, opts, obs)?),
        None => None,
    };
    let replaced = match target.as_mut() {
        Some(locked) => replaced_files(&me, locked, &plan)?,
        None => Vec::new(),
    };
    decide(&mut plan, opts.policy, obs)?;
    let report = apply::apply(host, &lock, files, &plan, &replaced, obs);
    drop(target);
    report
}

/// Locks the registered VM a restore replaces and makes sure it is not running.
fn lock_target<'h>(
    host: &'h host::Host,
    moref: host::VmRef,
    opts: &RestoreOptions,
    obs: &mut dyn Observer,
) -> Result<host::LockedVm<'h>> {
    let mode = if opts.wait {
        host::LockMode::Wait
    } else {
        host::LockMode::NoWait
    };
    let mut locked = host.lock_vm(moref, mode)?;
    let state = locked.vm().power_state(host);
    if state == host::PowerState::PoweredOff {
        return Ok(locked);
    }
    if !opts.power_off {
        return Err(Error::TargetRunning {
            vm: locked.vm().name(),
            state: state.to_string(),
        });
    }
    locked.power_off_or_discard()?;
    obs.event(&Event::Warning(format!(
        "{} was {state}: powered off for the restore",
        locked.vm().name()
    )));
    Ok(locked)
}

/// The files of the VM being replaced that lie in its own folder and that no other VM
/// owns: they go when the restore swaps its files in.
fn replaced_files(
    host: &host::Host,
    locked: &mut host::LockedVm<'_>,
    plan: &plan::Plan,
) -> Result<Vec<PathBuf>> {
    let vm = locked.vm().clone();
    let mut files = vm.config_files(host)?;
    files.extend(vm.suspend_file(host));
    for disk in locked.disk_files()? {
        files.extend(vmdk::link_files(&disk).unwrap_or_default());
        // Change tracking of the replaced disks describes content that goes.
        let tracking = vmdk::ctk::ctk_path(&disk);
        if tracking.exists() {
            files.push(tracking);
        }
    }
    let uids: Vec<u64> = locked
        .snapshots()
        .snapshots()
        .iter()
        .map(|s| s.uid)
        .collect();
    files.extend(uids.iter().filter_map(|u| locked.snapshot_memory_file(*u)));
    files.sort();
    files.dedup();
    Ok(files
        .into_iter()
        .filter(|f| f.parent() == Some(vm.dir.as_path()) && plan.owned.owner(f).is_none())
        .collect())
}

/// Settle every conflict of `plan` by `policy`, asking `obs` for `prompt`.
fn decide(plan: &mut plan::Plan, policy: ConflictPolicy, obs: &mut dyn Observer) -> Result<()> {
    for conflict in plan.conflicts_mut() {
        let answer = match policy {
            ConflictPolicy::Overwrite => crate::observer::Answer::Overwrite,
            ConflictPolicy::Keep => crate::observer::Answer::Keep,
            ConflictPolicy::Abort => crate::observer::Answer::Abort,
            ConflictPolicy::Prompt => {
                obs.ask(&conflict.what).ok_or_else(|| Error::CannotPrompt {
                    what: conflict.what.clone(),
                })?
            }
        };
        match answer {
            crate::observer::Answer::Abort => {
                return Err(Error::ConflictAbort {
                    what: conflict.what.clone(),
                })
            }
            crate::observer::Answer::Keep => {
                conflict.keep = true;
                obs.event(&Event::Kept {
                    what: conflict.what.clone(),
                });
            }
            crate::observer::Answer::Overwrite => {
                obs.event(&Event::Replaced {
                    what: conflict.what.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!(
            "Overwrite".parse::<ConflictPolicy>().unwrap(),
            ConflictPolicy::Overwrite
        );
        assert_eq!(
            "keep".parse::<ConflictPolicy>().unwrap(),
            ConflictPolicy::Keep
        );
        assert!("maybe".parse::<ConflictPolicy>().is_err());
    }
}
