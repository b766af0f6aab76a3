//! A snapshot held for file-level access (`vcbMounter -t file`, `vcb files` on a VM): the
//! same quiesced snapshot a full backup takes, but kept after this process returns, so
//! the guest's file systems can be read from its static disks for as long as needed. It
//! has its own name, so a backup's cleanup of leftover backup snapshots never commits it
//! under a reader; [`release_snapshot`] (`vcbMounter -U`) removes it, committing what
//! the guest wrote meanwhile.

use super::live::warn;
use super::quiesced::{pre_freeze, snapshot_quiesced, SnapshotRequest};
use super::{consolidate_leftovers, BackupOptions};
use crate::error::Result;
use crate::hooks::HookEnv;
use crate::observer::{Event, Observer};
use std::path::PathBuf;

/// The display name of the snapshot file-level access holds.
pub const FILE_SNAPSHOT_NAME: &str = "_vcb-file-access_";

/// A snapshot taken for file-level access.
#[derive(Debug, Clone)]
pub struct HeldSnapshot {
    /// The VM's display name.
    pub vm: String,
    /// Its managed object reference.
    pub moref: host::VmRef,
    /// The snapshot's uid.
    pub uid: u64,
    /// Each snapshotted disk's node and static base (read these; nothing writes them).
    pub disks: Vec<(String, PathBuf)>,
    /// Whether the guest was quiesced for the snapshot.
    pub quiesced: bool,
    /// What went wrong without stopping it.
    pub warnings: Vec<String>,
}

/// Quiesce and snapshot the VM `vm` and keep the snapshot.
///
/// # Errors
/// As for a backup's snapshot: VM lookup, locking, hooks, the snapshot itself.
pub fn hold_snapshot(
    host: &host::Host,
    vm: &str,
    opts: &BackupOptions,
    obs: &mut dyn Observer,
) -> Result<HeldSnapshot> {
    let vm = host.find_vm(vm)?;
    let env = HookEnv {
        vm_name: vm.name(),
        vm_uuid: vm.uuid().map(|u| u.to_string()).unwrap_or_default(),
        vm_folder: vm.dir.clone(),
    };
    pre_freeze(host, &env, obs)?;
    let mut locked = host.lock_vm(vm.moref, host::LockMode::Wait)?;
    consolidate_leftovers(&mut locked, obs)?;
    let running = locked.vm().power_state(host) == host::PowerState::PoweredOn;
    let mut warnings = Vec::new();
    let req = SnapshotRequest {
        name: FILE_SNAPSHOT_NAME,
        description: "vcb file-level access; removed by vcbMounter -U",
        running,
        env: &env,
        host,
    };
    let (created, quiesced) = snapshot_quiesced(&mut locked, req, opts, obs, &mut warnings)?;
    if let Some(pause) = opts.pause_after_snapshot {
        // Tests kill the holder here: the snapshot exists, its uid is not recorded yet.
        std::thread::sleep(pause);
    }
    for (node, why) in &created.skipped {
        warn(
            obs,
            &mut warnings,
            format!("{node}: not snapshotted ({why}); its files are not mounted"),
        );
    }
    Ok(HeldSnapshot {
        vm: env.vm_name,
        moref: vm.moref,
        uid: created.uid,
        disks: created
            .disks
            .iter()
            .map(|d| (d.node.to_string(), d.base.clone()))
            .collect(),
        quiesced,
        warnings,
    })
}

/// Remove the held snapshot `uid` of VM `moref` (its redo logs are committed: live when the
/// VM runs), or with `uid` `None` (a holder killed before it learnt the uid) every snapshot
/// named [`FILE_SNAPSHOT_NAME`]. Returns how many were removed.
///
/// # Errors
/// Locking and snapshot removal errors.
pub fn release_snapshot(
    host: &host::Host,
    moref: host::VmRef,
    uid: Option<u64>,
    obs: &mut dyn Observer,
) -> Result<usize> {
    let mut locked = host.lock_vm(moref, host::LockMode::Wait)?;
    let uids: Vec<u64> = locked
        .snapshots()
        .snapshots()
        .iter()
        .filter(|s| uid.map_or(s.display_name == FILE_SNAPSHOT_NAME, |u| s.uid == u))
        .map(|s| s.uid)
        .collect();
    for u in &uids {
        let started = std::time::Instant::now();
        locked.remove_snapshot(*u, &mut ())?;
        let live = locked.vm().power_state(host) == host::PowerState::PoweredOn;
        obs.event(&Event::SnapshotRemoved {
            vm: locked.vm().name(),
            live,
            elapsed: started.elapsed(),
        });
    }
    Ok(uids.len())
}
