//! Full-VM restore (vcbRestore, `vcb restore`).
//!
//! 1. Refuse an incomplete backup; read its catalog.
//! 2. Verify every file's size and SHA-256 against the catalog ([`verify`]).
//! 3. Plan: where each file and disk goes, from the catalog or an alternate catalog
//!    (`-a`: datastore paths of `config.vmx`, `config.suspenddir`, `config.logdir`,
//!    `disk.*.diskname`; folder; pool; a changed display name is ignored). Every path is
//!    untrusted: names that would leave the backup folder, the target datastore or the
//!    VM folder are refused here, before anything is written.
//! 4. Resolve conflicts (existing files, an already registered VM) by the
//!    [`ConflictPolicy`]; `abort` and an unanswerable `prompt` stop here.
//! 5. Write: disks converted back to their recorded provisioning and small files, each
//!    under a temporary name renamed into place; the .vmx last; then register the VM in
//!    its folder and resource pool. An interrupted restore leaves temporary files, never
//!    a half-written VM under its real name.

mod apply;
mod plan;
mod verify;
mod vmxedit;

pub use verify::{parse_catalog, read_catalog, verify};

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
/// [`Error::CannotPrompt`], host, disk and file errors. Everything up to the conflict
/// decisions happens before anything is written.
pub fn restore_vm(
    host: &mut host::Host,
    src: &dyn Destination,
    opts: &RestoreOptions,
    obs: &mut dyn Observer,
) -> Result<RestoreReport> {
    let catalog = read_catalog(src)?;
    let files = verify(src, &catalog)?;
    obs.event(&Event::Verified { files });
    let mut plan = plan::plan(host, src, &catalog, opts)?;
    decide(&mut plan, opts.policy, obs)?;
    apply::apply(host, src, &plan, obs)
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
