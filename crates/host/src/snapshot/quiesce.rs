//! Freezing a running guest for a snapshot, and the marker that makes the next lock
//! holder thaw a guest a killed process left frozen.
//!
//! The runtime's freeze has a watchdog thread that thaws the guest when the timeout
//! passes; it dies with the process. So the host writes [`FREEZE_MARKER`] in the VM
//! folder before freezing and removes it after a successful thaw: whoever takes the
//! VM's lock next ([`Host::lock_vm`](crate::Host::lock_vm)) finds it and thaws the
//! guest (a thaw of a guest that is not frozen does nothing).

use std::time::Duration;

use super::LockedVm;
use crate::error::{Error, Result};
use crate::fsutil::remove_file_if_exists;

/// The marker present in a VM folder while its guest may be frozen by vcb.
pub const FREEZE_MARKER: &str = ".vcb-backup-frozen";

impl LockedVm<'_> {
    /// Freezes the running guest's file systems through its agent, for at most
    /// `timeout` (the runtime's watchdog thaws it then). The marker goes first.
    ///
    /// # Errors
    /// [`Error::Io`] writing the marker (nothing is frozen then); [`Error::Runtime`].
    pub fn freeze(&mut self, timeout: Duration) -> Result<runtime::Quiesce> {
        let marker = self.vm.dir.join(FREEZE_MARKER);
        fsio::write_atomic(&marker, b"")?;
        let rt = self.vm.runtime(self.host);
        let result = rt.freeze(timeout).map_err(|e| self.rt_err(e));
        if !matches!(result, Ok(runtime::Quiesce::Frozen(_))) {
            remove_file_if_exists(&marker)?;
        }
        result
    }

    /// Records that the guest was thawed (the caller's guard thawed it): the marker goes.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn freeze_ended(&mut self) -> Result<()> {
        remove_file_if_exists(&self.vm.dir.join(FREEZE_MARKER))?;
        Ok(())
    }

    /// True when taking the lock thawed a guest that a killed process left frozen.
    pub fn thawed_leftover(&self) -> bool {
        self.thawed_leftover
    }

    /// Thaws the guest when the marker says a killed process may have left it frozen.
    /// A VM that does not run is not frozen: the marker just goes. A thaw that fails
    /// keeps the marker, so the next lock holder tries again.
    pub(super) fn thaw_leftover(&mut self) -> Result<()> {
        let marker = self.vm.dir.join(FREEZE_MARKER);
        if marker.symlink_metadata().is_err() {
            return Ok(());
        }
        if let Some(rt) = self.vm.runtime_state(self.host)? {
            match rt.thaw() {
                Ok(_) => self.thawed_leftover = true,
                Err(e) => {
                    tracing::warn!(
                        "{}: could not thaw after an interrupted backup: {e}",
                        self.vm.name()
                    );
                    return Err(Error::Runtime {
                        vm: self.vm.name(),
                        source: Box::new(e),
                    });
                }
            }
        }
        remove_file_if_exists(&marker)?;
        Ok(())
    }
}
