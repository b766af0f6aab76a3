//! Power operations under the VM lock, so they never run in the middle of a snapshot
//! operation or a backup of the same VM. Each checks the power state first and refuses
//! a wrong one with [`Error::WrongPowerState`]; the work is the runtime's.

use std::time::Duration;

use runtime::{PowerOnOptions, PowerOnReport, SuspendReport};

use super::LockedVm;
use crate::error::{Error, Result};
use crate::vm::PowerState;

impl LockedVm<'_> {
    /// The VM's power state now.
    pub fn power_state(&self) -> PowerState {
        self.vm.power_state(self.host)
    }

    /// Powers the VM on under QEMU; a suspended VM is resumed (as VMware does). An
    /// interrupted merge was already finished when the lock was taken.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] when it runs; [`Error::Runtime`] (QEMU failed to start,
    /// a setting has no QEMU equivalent...).
    pub fn power_on(&mut self, opts: &PowerOnOptions) -> Result<PowerOnReport> {
        self.require_not(PowerState::PoweredOn, "it is running already")?;
        let rt = self.vm.runtime(self.host);
        rt.power_on(opts).map_err(|e| self.rt_err(e))
    }

    /// Resumes a suspended VM from its .vmss.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless it is suspended; [`Error::Runtime`].
    pub fn resume(&mut self, opts: &PowerOnOptions) -> Result<PowerOnReport> {
        self.require(PowerState::Suspended, "only a suspended VM can be resumed")?;
        let rt = self.vm.runtime(self.host);
        rt.resume(opts).map_err(|e| self.rt_err(e))
    }

    /// Powers the VM off hard (the guest gets no warning; QEMU flushes the disks).
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless it runs; [`Error::Runtime`].
    pub fn power_off(&mut self) -> Result<()> {
        let rt = self.require_running()?;
        rt.power_off().map_err(|e| self.rt_err(e))?;
        self.after_power_off()
    }

    /// Brings the VM to powered off whatever its state: a running VM is powered off
    /// hard, a suspended one loses its suspended state (the .vmss is deleted, as
    /// "power off" of a suspended VM does in vSphere). Used when the VM's files are
    /// about to be replaced.
    ///
    /// # Errors
    /// [`Error::Runtime`]; [`Error::Io`] removing the state file.
    pub fn power_off_or_discard(&mut self) -> Result<()> {
        match self.power_state() {
            PowerState::PoweredOn => self.power_off(),
            PowerState::Suspended => {
                if let Some(vmss) = self.vm.suspend_file(self.host) {
                    crate::fsutil::remove_file_if_exists(&vmss)?;
                }
                Ok(())
            }
            PowerState::PoweredOff => Ok(()),
        }
    }

    /// Asks the guest to shut down (ACPI power button) and waits up to `timeout` for it.
    /// Returns how long the guest took.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless it runs; [`Error::Runtime`] with a timeout when
    /// the guest ignores the button (the VM keeps running; power it off to force).
    pub fn shutdown(&mut self, timeout: Duration) -> Result<Duration> {
        let rt = self.require_running()?;
        let took = rt.shutdown(timeout).map_err(|e| self.rt_err(e))?;
        self.after_power_off()?;
        Ok(took)
    }

    /// Resets the VM: the guest reboots at once.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless it runs; [`Error::Runtime`].
    pub fn reset(&mut self) -> Result<()> {
        let rt = self.require_running()?;
        rt.reset().map_err(|e| self.rt_err(e))
    }

    /// Suspends the VM: its memory state goes to `<vm>.vmss` and QEMU ends. Snapshots
    /// and backups of the suspended VM work on its files.
    ///
    /// # Errors
    /// [`Error::WrongPowerState`] unless it runs; [`Error::Runtime`].
    pub fn suspend(&mut self) -> Result<SuspendReport> {
        let rt = self.require_running()?;
        rt.suspend().map_err(|e| self.rt_err(e))
    }

    /// The runtime handle of the running VM, or [`Error::WrongPowerState`].
    fn require_running(&self) -> Result<runtime::Vm> {
        match self.running()? {
            Some(rt) => Ok(rt),
            None => Err(Error::WrongPowerState {
                vm: self.vm.name(),
                state: self.power_state(),
                reason: "it is not running",
            }),
        }
    }

    fn require(&self, state: PowerState, reason: &'static str) -> Result<()> {
        let now = self.power_state();
        if now != state {
            return Err(Error::WrongPowerState {
                vm: self.vm.name(),
                state: now,
                reason,
            });
        }
        Ok(())
    }

    /// Refuses with [`Error::WrongPowerState`] when the VM is in `state`.
    pub(super) fn require_not(&self, state: PowerState, reason: &'static str) -> Result<()> {
        let now = self.power_state();
        if now == state {
            return Err(Error::WrongPowerState {
                vm: self.vm.name(),
                state: now,
                reason,
            });
        }
        Ok(())
    }

    /// Finishes an interrupted merge that had to wait for QEMU to close its files.
    fn after_power_off(&mut self) -> Result<()> {
        if self.pending_offline_merge {
            self.recover()?;
        }
        Ok(())
    }
}
