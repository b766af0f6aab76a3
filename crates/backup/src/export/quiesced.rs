//! The quiesced snapshot both a full backup and a file-level mount take: quiesce a running
//! guest, take the snapshot, thaw at once whatever happened, run the post-thaw hooks.

use super::live::{quiesce, thaw, warn};
use super::{check_cancel, BackupOptions};
use crate::error::Result;
use crate::hooks::{self, HookEnv, Stage};
use crate::observer::{Event, Observer};
use std::time::Instant;

/// What snapshot to take, of what.
pub(crate) struct SnapshotRequest<'a> {
    pub name: &'static str,
    pub description: &'static str,
    pub running: bool,
    pub env: &'a HookEnv,
    pub host: &'a host::Host,
}

/// Run the pre-freeze hooks of the VM in `env` (a failing hook aborts: nothing exists yet).
pub(crate) fn pre_freeze(host: &host::Host, env: &HookEnv, obs: &mut dyn Observer) -> Result<()> {
    check_cancel(obs)?;
    for hook in hooks::hooks_for(host.root(), &env.vm_folder, Stage::PreFreeze)? {
        hooks::run_hook(&hook, Stage::PreFreeze, env)?;
        obs.event(&Event::HookRan {
            path: hook,
            stage: Stage::PreFreeze.as_str(),
        });
    }
    Ok(())
}

/// Quiesce (a running guest with an agent), snapshot, thaw, post-thaw hooks. Returns the
/// snapshot and whether the guest was frozen for the whole snapshot. When the thaw fails
/// or the user cancels, the snapshot is removed again and the error returned.
pub(crate) fn snapshot_quiesced(
    locked: &mut host::LockedVm<'_>,
    req: SnapshotRequest<'_>,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
    warnings: &mut Vec<String>,
) -> Result<(host::SnapshotCreated, bool)> {
    let name = locked.vm().name();
    let guard = if req.running {
        quiesce(locked, &name, opts, obs, warnings)
    } else {
        None
    };
    if let (Some(_), Some(pause)) = (&guard, opts.pause_while_frozen) {
        std::thread::sleep(pause);
    }
    let snap_started = Instant::now();
    let created = locked.create_snapshot(req.name, req.description);
    if created.is_ok() {
        obs.event(&Event::SnapshotTaken {
            vm: name.clone(),
            live: req.running,
            elapsed: snap_started.elapsed(),
        });
    }
    // Thaw at once, also when the snapshot failed.
    let thawed = match guard {
        Some(guard) => thaw(locked, guard, &name, obs, warnings),
        None => Ok(false),
    };
    let quiesced = matches!(thawed, Ok(true)) && created.is_ok();
    let created = created?;
    if let Err(e) = thawed.and_then(|_| check_cancel(obs)) {
        // A guest that may still be frozen, or a cancel: the snapshot goes (its redo logs
        // are committed back).
        if let Err(r) = locked.remove_snapshot(created.uid, &mut ()) {
            warn(
                obs,
                warnings,
                format!(
                    "could not remove the snapshot {} (the next backup commits it): {r}",
                    req.name
                ),
            );
        }
        return Err(e);
    }
    let post_thaw = hooks::hooks_for(req.host.root(), &req.env.vm_folder, Stage::PostThaw)
        .unwrap_or_else(|e| {
            warn(obs, warnings, e.to_string());
            Vec::new()
        });
    for hook in post_thaw {
        match hooks::run_hook(&hook, Stage::PostThaw, req.env) {
            Ok(()) => obs.event(&Event::HookRan {
                path: hook,
                stage: Stage::PostThaw.as_str(),
            }),
            Err(e) => warn(obs, warnings, e.to_string()),
        }
    }
    Ok((created, quiesced))
}
