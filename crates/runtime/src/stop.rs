//! Ending QEMU: power-off, the guest's shutdown, and a guest that powered itself off
//! while change tracking keeps QEMU paused (`-action shutdown=pause`). Each hands QEMU's
//! last writes to change tracking (see the `tracking` module) before QEMU goes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::paths::VmFiles;
use crate::process;
use crate::qmp::Qmp;
use crate::vm::{Vm, QUIT_GRACE};
use crate::vmlog;

impl Vm {
    /// Powers the VM off hard: QMP `quit` (QEMU flushes its disks and exits; the guest
    /// gets no warning), SIGKILL if QEMU does not exit within 10 s or its monitor does not
    /// answer.
    ///
    /// # Errors
    /// [`Error::NotRunning`].
    pub fn power_off(&self) -> Result<()> {
        let files = self.files()?;
        let pid = self.running(&files)?;
        vmlog::append(&files.log, "vcb", "power off");
        self.stop_qemu(&files, pid);
        Ok(())
    }

    /// Ends QEMU: the guest is stopped, change tracking takes QEMU's last writes, QMP
    /// `quit` (QEMU flushes its disks), SIGKILL if QEMU does not exit within
    /// [`QUIT_GRACE`] or its monitor does not answer.
    pub(crate) fn stop_qemu(&self, files: &VmFiles, pid: u32) {
        let mut handed_over = Vec::new();
        if let Ok(mut q) = Qmp::connect(&files.qmp, Duration::from_secs(5)) {
            q.log_events_to(&files.log);
            if self.tracks_changes() && q.execute("stop", Value::Null).is_ok() {
                handed_over = self.stop_tracking(&mut q);
            }
            let _ = q.execute_within("quit", Value::Null, Duration::from_secs(5));
        }
        let clean = process::wait_gone(pid, &files.folder, QUIT_GRACE);
        if !clean {
            self.kill(files, pid);
        }
        process::remove_state_files(files);
        if clean {
            crate::tracking::finish_tracking(&handed_over);
        }
    }

    /// A tracked VM whose guest powered itself off is paused in QEMU's `shutdown` state
    /// (`-action shutdown=pause`): end it the way a power-off does. True when it was.
    pub(crate) fn end_if_shut_down(&self, files: &VmFiles, pid: u32) -> bool {
        if !self.tracks_changes() {
            return false;
        }
        let Ok(mut q) = Qmp::connect(&files.qmp, Duration::from_secs(2)) else {
            return false;
        };
        let status = q.execute("query-status", Value::Null);
        if !status.is_ok_and(|s| s["status"] == "shutdown") {
            return false;
        }
        drop(q);
        vmlog::append(&files.log, "vcb", "the guest powered off; ending QEMU");
        self.stop_qemu(files, pid);
        true
    }

    pub(crate) fn kill(&self, files: &VmFiles, pid: u32) {
        vmlog::append(&files.log, "vcb", &format!("killing QEMU pid {pid}"));
        process::signal(pid, libc::SIGKILL);
        process::wait_gone(pid, &files.folder, Duration::from_secs(10));
        process::remove_state_files(files);
    }

    /// Shuts the guest down: presses the ACPI power button (`system_powerdown`) and waits
    /// up to `timeout` for QEMU to exit. Returns how long the guest took.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; [`Error::Timeout`] when the guest ignores the button (the
    /// VM keeps running; power it off to force).
    pub fn shutdown(&self, timeout: Duration) -> Result<Duration> {
        let files = self.files()?;
        let pid = self.running(&files)?;
        let started = Instant::now();
        vmlog::append(&files.log, "vcb", "shutdown (ACPI power button)");
        self.qmp()?.execute("system_powerdown", Value::Null)?;
        let deadline = Instant::now() + timeout;
        loop {
            if !process::is_our_qemu(pid, &files.folder) || self.end_if_shut_down(&files, pid) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("guest shutdown of {}", self.vmx.display()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        process::wait_gone(pid, &files.folder, QUIT_GRACE);
        process::remove_state_files(&files);
        Ok(started.elapsed())
    }
}
