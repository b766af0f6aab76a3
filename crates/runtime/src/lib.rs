//! Runs VMware-format VMs (a folder with a .vmx and vmdk disks) under QEMU, and gives the
//! layers above what they need to back up running VMs: power operations, suspend and
//! resume, live snapshots and commits of the disks, and quiescing through the guest
//! agent.
//!
//! # Model
//!
//! A [`Vm`] is a handle on a .vmx path; it holds no connection. Each call reads the .vmx,
//! finds the VM's QEMU through files in the VM folder and talks to it over a fresh QMP
//! connection ([`Qmp`]):
//!
//! | file in the VM folder | meaning |
//! |---|---|
//! | [`.vcb-qemu.pid`](PID_FILE) | QEMU's pid (QEMU writes, locks and removes it) |
//! | [`.vcb-qmp.sock`](QMP_SOCKET) | the QMP monitor |
//! | [`.vcb-qga.sock`](AGENT_SOCKET) | the guest agent channel, when `vcb.guestAgent = "TRUE"` |
//! | [`vmware.log`](LOG_FILE) | QEMU's output, every runtime action and every QMP event seen |
//! | `<vm>.vmss` | memory state of a suspended VM (in `suspend.Directory` if set) |
//!
//! QEMU runs with the VM folder as working directory, in its own process group, detached
//! from the caller: a VM keeps running when the vcb process that started it exits, and
//! any vcb process finds it. [`Vm::status`] trusts a pid only if that process is a live
//! QEMU whose working directory is the VM folder; a QEMU that died (crash, `kill -9`) is
//! reported [`RuntimeState::Off`] and its stale files are removed.
//!
//! The .vmx → command line mapping is in [`QemuCommand`]'s module docs (`cmdline`):
//! memory, CPUs, disks by node on QEMU's closest controller models, serial ports to files,
//! user-mode networking, direct kernel boot (`vcb.kernel`/`vcb.initrd`/`vcb.append`), and
//! TCG unless the CPU has VT-x/AMD-V and /dev/kvm works. Each disk is opened as block node
//! `<node>` (`scsi0-0`) over protocol node `<node>-file`, on device `disk-<node>`.
//!
//! # Live snapshots
//!
//! [`Vm::live_snapshot`] creates ESX redo logs with [`vmdk::create_child`] and switches
//! the running disks onto them in one QMP transaction; the parents are static from then
//! on. [`Vm::live_commit`] merges a redo log back while the guest runs and deletes it.
//! [`Vm::node_chain`] tells which files a running disk reads and writes.
//! [`Vm::live_snapshot_with_memory`] also saves the memory and device state at the
//! switch (the guest runs on), and [`Vm::resume_from`] starts the VM from such a state
//! file once its disks read the snapshot's parents again. The runtime
//! does not edit the .vmx or .vmsd: the host layer records snapshots.
//!
//! # Invariants
//! - A file the guest may write is never written by vcb: redo logs are created before the
//!   switch, and parents are only read after it.
//! - Every wait has a deadline; a freeze always ends in a thaw (watchdog, drop, or the
//!   failed freeze's own thaw).
//! - The library never prints; long work reports through [`vmdk::Progress`].
//!
//! ```no_run
//! use std::time::Duration;
//! # fn main() -> Result<(), runtime::Error> {
//! let vm = runtime::Vm::new("/vol/datastore1/vm37/vm37.vmx");
//! vm.power_on(&runtime::PowerOnOptions::default())?;
//! let node: vmx::DiskNode = "scsi0:0".parse().expect("node");
//! let quiesce = vm.freeze(Duration::from_secs(30))?;
//! let snap = vm.live_snapshot(&[(node, "/vol/datastore1/vm37/vm37-000001.vmdk".into())])?;
//! if let runtime::Quiesce::Frozen(guard) = quiesce {
//!     guard.thaw()?;
//! }
//! // ... copy snap.disks[0].parent while the guest writes into the redo log ...
//! vm.live_commit(node, &mut ())?;
//! vm.shutdown(Duration::from_secs(60))?;
//! # let _ = snap;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod cmdline;
mod commit;
mod error;
mod live;
mod memsnap;
mod paths;
mod process;
pub mod qmp;
mod quiesce;
mod stop;
mod suspend;
mod tracking;
mod vm;
mod vmlog;
mod wire;

pub use cmdline::{device_id, node_name, Accel, QemuCommand, RunningDisk};
pub use commit::CommitReport;
pub use error::{Error, Result};
pub use live::{LiveSnapshot, SnapshotDisk};
pub use memsnap::MemorySnapshot;
pub use paths::{PathPolicy, VmFiles, AGENT_SOCKET, LOG_FILE, PID_FILE, QMP_SOCKET};
pub use qmp::Qmp;
pub use quiesce::{FreezeGuard, Quiesce, ThawReport};
pub use suspend::SuspendReport;
pub use tracking::{BITMAP_PREFIX, NBD_SOCKET};
pub use vm::{AccelChoice, PowerOnOptions, PowerOnReport, RuntimeState, Vm, QEMU_PROGRAM};

/// Entry points for the fuzz targets (`fuzz/`): the guest agent's protocol, which is
/// otherwise internal. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Synchronises with the "agent" at `socket` and asks it for the guest's addresses,
    /// within `timeout`.
    pub fn agent_session(socket: &std::path::Path, timeout: std::time::Duration) {
        if let Ok(Some(mut agent)) = crate::agent::Agent::connect(socket, timeout) {
            let _ = agent.ip_addresses(timeout);
            let _ = agent.execute("guest-fsfreeze-thaw", serde_json::Value::Null, timeout);
        }
    }
}
