//! Suspend to a `.vmss` file and resume from it.
//!
//! QEMU refuses an ordinary migration of a VM with vmdk disks ("does not support live
//! migration"), but its `cpr-reboot` migration mode (QEMU 10) saves the memory and device
//! state of a stopped VM to a file and loads it into a new QEMU started with the same
//! command line plus `-incoming defer`. The disks must not change in between.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cmdline::Accel;
use crate::error::{Error, Result};
use crate::paths::VmFiles;
use crate::process;
use crate::qmp::Qmp;
use crate::vm::{AccelChoice, PowerOnOptions, PowerOnReport, RuntimeState, Vm};
use crate::vmlog;

/// How long saving or loading the memory state may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

/// What [`Vm::suspend`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspendReport {
    /// The suspend file.
    pub vmss: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// From the call to QEMU's exit.
    pub elapsed: Duration,
}

impl Vm {
    /// Suspends the VM: saves its memory and device state to the `.vmss` file (written as
    /// `.vmss.partial`, synced, then renamed) and ends QEMU.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; [`Error::Migration`] (the VM is set running again);
    /// QMP errors and timeouts.
    pub fn suspend(&self) -> Result<SuspendReport> {
        let started = Instant::now();
        let files = self.files()?;
        let pid = self.running(&files)?;
        let partial = partial_path(&files.vmss);
        let _ = std::fs::remove_file(&partial);
        vmlog::append(
            &files.log,
            "vcb",
            &format!("suspend to {}", files.vmss.display()),
        );
        let mut q = self.qmp()?;
        q.execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))?;
        q.execute("migrate", json!({"channels": [file_channel(&partial)]}))?;
        if let Err(e) = self.wait_migration(&mut q, &files, &partial) {
            let _ = q.execute("cont", Value::Null);
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        // The guest is stopped by the migration: change tracking takes its last writes.
        let handed_over = if self.tracks_changes() {
            self.stop_tracking(&mut q)
        } else {
            Vec::new()
        };
        let _ = q.execute_within("quit", Value::Null, Duration::from_secs(5));
        drop(q);
        let clean = process::wait_gone(pid, &files.folder, Duration::from_secs(30));
        if !clean {
            self.kill(&files, pid);
        }
        process::remove_state_files(&files);
        if clean {
            crate::tracking::finish_tracking(&handed_over);
        }
        let f = std::fs::File::open(&partial).map_err(|e| Error::io(&partial, "open", e))?;
        f.sync_all().map_err(|e| Error::io(&partial, "fsync", e))?;
        let size_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&partial, &files.vmss).map_err(|e| Error::io(&files.vmss, "rename", e))?;
        sync_parent(&files.vmss);
        vmlog::append(
            &files.log,
            "vcb",
            &format!("suspended ({size_bytes} bytes)"),
        );
        Ok(SuspendReport {
            vmss: files.vmss,
            size_bytes,
            elapsed: started.elapsed(),
        })
    }

    /// Resumes a suspended VM: starts QEMU with the .vmx's command line plus
    /// `-incoming defer`, loads the `.vmss`, continues the guest, and deletes the `.vmss`.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`]; [`Error::NotSuspended`]; start errors;
    /// [`Error::Migration`] (QEMU is ended and the `.vmss` kept).
    pub fn resume(&self, opts: &PowerOnOptions) -> Result<PowerOnReport> {
        let files = self.files()?;
        match self.status()? {
            RuntimeState::Running { pid } => {
                return Err(Error::AlreadyRunning {
                    vmx: self.vmx.clone(),
                    pid,
                })
            }
            RuntimeState::Off => {
                return Err(Error::NotSuspended {
                    vmx: self.vmx.clone(),
                    vmss: files.vmss,
                })
            }
            RuntimeState::Suspended { .. } => {}
        }
        let report = self.start_from(&files, &files.vmss, opts)?;
        std::fs::remove_file(&files.vmss).map_err(|e| Error::io(&files.vmss, "remove", e))?;
        sync_parent(&files.vmss);
        vmlog::append(&files.log, "vcb", "resumed");
        Ok(report)
    }

    /// Starts a powered-off VM from a memory state file saved by [`Vm::suspend`] or
    /// [`Vm::live_snapshot_with_memory`] (the file is only read, and kept). The disks
    /// must read what they read when the state was saved: for a memory snapshot, the
    /// snapshot's parents (fresh redo logs over them are fine).
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`]; [`Error::SuspendedState`] (the VM's own suspend file
    /// would go stale); [`Error::Io`] when `state` does not exist; start errors;
    /// [`Error::Migration`] (QEMU is ended).
    pub fn resume_from(&self, state: &Path, opts: &PowerOnOptions) -> Result<PowerOnReport> {
        let files = self.files()?;
        match self.status()? {
            RuntimeState::Running { pid } => {
                return Err(Error::AlreadyRunning {
                    vmx: self.vmx.clone(),
                    pid,
                })
            }
            RuntimeState::Suspended { vmss } => {
                return Err(Error::SuspendedState {
                    vmx: self.vmx.clone(),
                    vmss,
                })
            }
            RuntimeState::Off => {}
        }
        std::fs::metadata(state).map_err(|e| Error::io(state, "open", e))?;
        let report = self.start_from(&files, state, opts)?;
        vmlog::append(&files.log, "vcb", "resumed");
        Ok(report)
    }

    /// Starts QEMU with `-incoming defer`, loads `state` and continues the guest.
    fn start_from(
        &self,
        files: &VmFiles,
        state: &Path,
        opts: &PowerOnOptions,
    ) -> Result<PowerOnReport> {
        let started = Instant::now();
        // The saved CPU state must be loaded by the accelerator that saved it: suspend
        // never changes accelerator, and Auto picks the same one on the same host.
        let accel = match opts.accel {
            AccelChoice::Auto if process::kvm_available() => Accel::Kvm,
            AccelChoice::Kvm => Accel::Kvm,
            _ => Accel::Tcg,
        };
        let command = self.build(accel, true, opts)?;
        vmlog::append(
            &files.log,
            "vcb",
            &format!("resume from {}", state.display()),
        );
        let (pid, mut q) = self.start(files, &command, opts)?;
        let loaded = q
            .execute("migrate-set-parameters", json!({"mode": "cpr-reboot"}))
            .and_then(|_| {
                q.execute(
                    "migrate-incoming",
                    json!({"channels": [file_channel(state)]}),
                )
            })
            .and_then(|_| self.wait_migration(&mut q, files, state))
            .and_then(|()| {
                if self.tracks_changes() {
                    self.begin_tracking(&mut q, pid)?;
                }
                q.execute("cont", Value::Null)
            });
        if let Err(e) = loaded {
            let _ = q.execute_within("quit", Value::Null, Duration::from_secs(5));
            if !process::wait_gone(pid, &files.folder, Duration::from_secs(10)) {
                self.kill(files, pid);
            }
            process::remove_state_files(files);
            return Err(e);
        }
        Ok(PowerOnReport {
            pid,
            command,
            kvm_fallback: None,
            elapsed: started.elapsed(),
        })
    }

    /// Polls `query-migrate` until the migration completes or fails.
    pub(crate) fn wait_migration(&self, q: &mut Qmp, files: &VmFiles, vmss: &Path) -> Result<()> {
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            let info = q.execute("query-migrate", Value::Null)?;
            let status = info["status"].as_str().unwrap_or("none").to_owned();
            match status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let reason = info["error-desc"]
                        .as_str()
                        .unwrap_or("no reason given")
                        .to_owned();
                    vmlog::append(&files.log, "vcb", &format!("migration {status}: {reason}"));
                    return Err(Error::Migration {
                        vmx: self.vmx.clone(),
                        vmss: vmss.to_path_buf(),
                        status,
                        reason,
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("migration to/from {}", vmss.display()),
                    after: MIGRATION_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A migration channel to or from a file (structured, so no URI escaping is needed).
pub(crate) fn file_channel(path: &Path) -> Value {
    json!({"channel-type": "main", "addr": {"transport": "file", "filename": path, "offset": 0}})
}

pub(crate) fn partial_path(vmss: &Path) -> PathBuf {
    let mut name = vmss.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    vmss.with_file_name(name)
}

/// Makes a rename or removal in `path`'s folder durable (best effort).
pub(crate) fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_partial_names() {
        let c = file_channel(Path::new("/vm/a,b.vmss"));
        assert_eq!(c["addr"]["filename"], "/vm/a,b.vmss");
        assert_eq!(
            partial_path(Path::new("/vm/a.vmss")),
            Path::new("/vm/a.vmss.partial")
        );
    }

    #[test]
    fn error_resume_needs_a_suspended_vm() {
        let dir = tempfile::tempdir().unwrap();
        let vmx = dir.path().join("a.vmx");
        std::fs::write(&vmx, "memsize = \"256\"\n").unwrap();
        let err = Vm::new(&vmx)
            .resume(&PowerOnOptions::default())
            .unwrap_err();
        assert!(matches!(err, Error::NotSuspended { .. }), "{err}");
        let err = Vm::new(&vmx).suspend().unwrap_err();
        assert!(matches!(err, Error::NotRunning { .. }), "{err}");
    }
}
