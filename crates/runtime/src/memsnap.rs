//! Live snapshots with memory: the disks' redo logs and the VM's memory and device state
//! saved at one instant, and the VM keeps running.
//!
//! With the guest stopped, the disks are switched onto new redo logs (the live snapshot
//! transaction) and the memory and device state is saved with a `cpr-reboot` migration to
//! a file (the same mechanism as [`Vm::suspend`]); then the guest continues. The disks at
//! that instant are exactly the redo logs' parents, which are static from then on, so the
//! state file and the parents belong together: [`Vm::resume_from`] starts the VM from the
//! state file once its disks read the parents again (after a revert).
//!
//! Measured with QEMU 10.0.2: when a `cpr-reboot` migration of a stopped VM completes,
//! QEMU leaves the source in run state `postmigrate` with its block nodes inactivated;
//! `cont` reactivates the block nodes and runs the guest again (the guest does not
//! notice), and the disks take writes and live commits as before.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmdk::ChildFormat;
use vmx::DiskNode;

use crate::error::{Error, Result};
use crate::live::LiveSnapshot;
use crate::suspend::{file_channel, partial_path, sync_parent};
use crate::vm::Vm;
use crate::vmlog;

/// What [`Vm::live_snapshot_with_memory`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySnapshot {
    /// The disks' switch onto redo logs. Its `guest_paused` covers the switch and the
    /// memory save.
    pub disks: LiveSnapshot,
    /// The memory state file.
    pub state_file: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// The migration to the state file alone (the guest is stopped throughout).
    pub save_elapsed: Duration,
    /// From the call to the state file being durable.
    pub elapsed: Duration,
}

impl Vm {
    /// Takes a live snapshot of the listed disks (as
    /// [`live_snapshot_as`](Vm::live_snapshot_as)) and saves the VM's memory and device
    /// state to `state_file` at the same instant, then lets the guest continue.
    ///
    /// The guest is stopped from the redo logs' opening to the end of the memory save
    /// (about a second for a 256 MiB guest under TCG). The state is written to
    /// `<state_file>.partial`, then synced (after the guest runs again) and renamed.
    ///
    /// # Errors
    /// As for [`live_snapshot_as`](Vm::live_snapshot_as); [`Error::Io`] when
    /// `state_file` exists already (nothing is done); [`Error::Migration`] and QMP
    /// errors from the memory save: then the disks are committed back into their parents
    /// (the redo logs are deleted), no state file is left, and the guest runs on.
    pub fn live_snapshot_with_memory(
        &self,
        disks: &[(DiskNode, PathBuf)],
        format: ChildFormat,
        state_file: &Path,
    ) -> Result<MemorySnapshot> {
        let started = Instant::now();
        let files = self.files()?;
        self.running(&files)?;
        if state_file.exists() {
            return Err(Error::io(
                state_file,
                "create",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let partial = partial_path(state_file);
        let _ = std::fs::remove_file(&partial);
        let mut save_elapsed = Duration::ZERO;
        let taken = self.switch_disks(disks, format, |q| {
            vmlog::append(
                &files.log,
                "vcb",
                &format!("saving memory state to {}", state_file.display()),
            );
            let saving = Instant::now();
            q.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
            q.execute("migrate", json!({"channels": [file_channel(&partial)]}))?;
            self.wait_migration(q, &files, &partial)?;
            save_elapsed = saving.elapsed();
            let status = q.execute("query-status", Value::Null)?;
            vmlog::append(
                &files.log,
                "vcb",
                &format!("memory state saved; run state {}", status["status"]),
            );
            Ok(())
        });
        let snapshot = match taken {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                // Undo a switch that happened: every disk whose top is its new redo log.
                let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
                for (node, redo) in disks {
                    let on_redo = self
                        .node_chain(*node)
                        .is_ok_and(|c| c.first().map(|f| canon(f)) == Some(canon(redo)));
                    if on_redo {
                        let _ = self.live_commit(*node, &mut ());
                    }
                }
                return Err(e);
            }
        };
        let durable = (|| {
            let f = std::fs::File::open(&partial).map_err(|e| Error::io(&partial, "open", e))?;
            f.sync_all().map_err(|e| Error::io(&partial, "fsync", e))?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::rename(&partial, state_file)
                .map_err(|e| Error::io(state_file, "rename", e))?;
            sync_parent(state_file);
            Ok(size)
        })();
        let size_bytes = match durable {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        vmlog::append(
            &files.log,
            "vcb",
            &format!(
                "memory snapshot: {} ({size_bytes} bytes), guest paused {:?}",
                state_file.display(),
                snapshot.guest_paused
            ),
        );
        Ok(MemorySnapshot {
            disks: snapshot,
            state_file: state_file.to_path_buf(),
            size_bytes,
            save_elapsed,
            elapsed: started.elapsed(),
        })
    }
}
