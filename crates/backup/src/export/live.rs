//! The running-VM parts of a backup: independent disks left out, the guest quiesced
//! through its agent and thawed, warnings recorded for the catalog.

use super::{BackupOptions, DiskPlan, DEFAULT_QUIESCE_TIMEOUT};
use crate::error::{Error, Result};
use crate::observer::{Event, Observer};
use std::time::{Duration, Instant};

/// An independent disk of a running VM is not snapshotted: the guest writes it during
/// the copy, which would be torn. It is left out, with a warning the catalog records.
pub(super) fn mark_independent(
    disks: &[DiskPlan],
    running: bool,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Vec<DiskPlan> {
    disks
        .iter()
        .cloned()
        .map(|mut d| {
            if running && d.independent && d.skipped.is_none() {
                let reason =
                    "independent disk of a running VM: not snapshotted, a copy would be torn"
                        .to_owned();
                warn(
                    obs,
                    warnings,
                    format!("{}: {reason}; not backed up", d.node),
                );
                d.skipped = Some(reason);
            }
            d
        })
        .collect()
}

/// What a backup learnt from the running VM, for the catalog and the name cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveInfo {
    /// The guest's addresses (agent, else `guestinfo.ip`).
    pub(crate) ips: Vec<String>,
    /// The guest was frozen for the whole snapshot.
    pub(crate) quiesced: bool,
}

/// Freezes a running guest through its agent, unless turned off. `None` (with an event
/// saying why) when nothing was frozen: the backup is then crash-consistent.
pub(super) fn quiesce(
    locked: &mut host::LockedVm<'_>,
    name: &str,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Option<runtime::FreezeGuard> {
    let not = |obs: &mut dyn Observer, reason: String| {
        obs.event(&Event::NotQuiesced {
            vm: name.to_owned(),
            reason,
        });
    };
    if opts.no_quiesce {
        not(obs, "quiescing turned off".to_owned());
        return None;
    }
    let started = Instant::now();
    match locked.freeze(opts.quiesce_timeout.unwrap_or(DEFAULT_QUIESCE_TIMEOUT)) {
        Ok(runtime::Quiesce::Frozen(guard)) => {
            obs.event(&Event::Quiesced {
                vm: name.to_owned(),
                filesystems: guard.filesystems(),
                elapsed: started.elapsed(),
            });
            Some(guard)
        }
        Ok(runtime::Quiesce::NoAgent) => {
            not(obs, "no guest agent".to_owned());
            None
        }
        Err(e) => {
            warn(
                obs,
                warnings,
                format!("could not quiesce {name} (backing up crash-consistent): {e}"),
            );
            not(obs, format!("the freeze failed: {e}"));
            None
        }
    }
}

/// Thaws the guest; `Ok(true)` when it stayed frozen until now (the snapshot is
/// quiesced). A thaw that fails twice is an error: the backup must not report success
/// while the guest may still be frozen (the marker stays, so the next process that
/// takes the VM's lock tries the thaw again).
pub(super) fn thaw(
    locked: &mut host::LockedVm<'_>,
    guard: runtime::FreezeGuard,
    name: &str,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Result<bool> {
    let report = match guard.thaw() {
        Ok(r) => r,
        Err(first) => {
            // One more try on a fresh agent connection before giving up.
            locked
                .vm()
                .runtime(locked.host())
                .thaw()
                .map_err(|second| Error::ThawFailed {
                    vm: name.to_owned(),
                    reason: format!("{first}; then {second}"),
                })?;
            warn(
                obs,
                warnings,
                format!("{name}: the first thaw failed ({first}); a second one succeeded"),
            );
            runtime::ThawReport {
                frozen_for: Duration::ZERO,
                by_watchdog: false,
            }
        }
    };
    locked.freeze_ended()?;
    if report.by_watchdog {
        warn(
            obs,
            warnings,
            format!("{name}: the freeze timed out before the snapshot was taken; the backup is crash-consistent"),
        );
    }
    obs.event(&Event::Thawed {
        vm: name.to_owned(),
        frozen_for: report.frozen_for,
        by_watchdog: report.by_watchdog,
    });
    Ok(!report.by_watchdog)
}

pub(super) fn warn(obs: &mut dyn Observer, warnings: &mut Vec<String>, text: String) {
    obs.event(&Event::Warning(text.clone()));
    warnings.push(text);
}
