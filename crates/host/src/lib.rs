//! A standalone VMware-style host kept in files: datastores, an inventory of VMs with
//! folders and resource pools, VM configuration (.vmx), snapshots (redo logs and the
//! .vmsd), power state, locks, VM search specifiers, the VM name cache and host
//! configuration backup. Running VMs are QEMU processes of the `runtime` crate
//! ([`Vm::runtime`]); power operations and snapshots of running VMs go through
//! [`LockedVm`] so that they hold the VM lock.
//!
//! ## On disk
//! ```text
//! <root>/                         the host (chosen by the caller: --root / VCB_ROOT)
//!   host.toml                     name, datastores (name -> folder), folders, pools
//!   inventory.toml                registered VMs: .vmx datastore path, folder, pool
//!   backuptools.conf              (optional) kept with the host's configuration
//!   vmnamecache                   default VM name cache (see [`namecache`])
//!   .vcb-lock                     host lock (inventory and configuration changes)
//!   volumes/datastore1/           the default datastore
//!     vm37/vm37.vmx vm37.vmdk vm37-flat.vmdk vm37.nvram vm37.vmsd
//!          vm37-000001.vmdk vm37-000001-delta.vmdk    (redo log while a snapshot exists)
//!          .vcb-lock                                  VM folder lock
//!          .vcb-journal                               merge in progress (see snapshot)
//! ```
//!
//! ## Invariants
//! - A VM folder is changed only under its lock ([`Vm::lock`], [`Host::lock_vm`]);
//!   the host lock is taken before a VM lock, never after.
//! - `host.toml`, `inventory.toml`, .vmx and .vmsd files are replaced atomically.
//! - Every file name read from a .vmx, .vmsd or descriptor resolves inside one of the
//!   host's datastores, or the operation is refused before anything changes.
//! - A parent disk with children is never written; a redo log is deleted only when no
//!   snapshot and not the current state need it (see [`snapshot`]).
//! - MoRefs are positions in the inventory, numbered from [`FIRST_MOREF`] when it is
//!   loaded; they may change when VMs are unregistered.
//!
//! ## Typical use (the backup layer)
//! ```no_run
//! # fn main() -> Result<(), host::Error> {
//! let host = host::Host::open(std::path::Path::new("/var/lib/vcb"))?;
//! let vm = host.find_vm("uuid:564d78a1-8c1c-59b4-fa02-be14138797be")?;
//! let mut locked = host.lock_vm(vm.moref, host::LockMode::Wait)?;
//! let snap = locked.create_snapshot(host::snapshot::BACKUP_SNAPSHOT_NAME, "consolidated backup")?;
//! for disk in &snap.disks {
//!     // export disk.base (static now) with vmdk::Disk::open
//! #   let _ = disk;
//! }
//! locked.remove_snapshot(snap.uid, &mut ())?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod bundle;
mod config;
mod confine;
mod create;
mod error;
mod fsutil;
mod host;
mod hostlock;
mod inventory;
mod lock;
pub mod namecache;
pub mod snapshot;
mod specifier;
mod vm;
mod vmops;

pub use bundle::{backup_config, restore_config, BundleReport, BACKUPTOOLS_CONF};
pub use config::{normalize_container, ContainerKind, HostConfig, CONFIG_VERSION, DATACENTER};
pub use confine::Confined;
pub use create::{DiskSource, VmSpec};
pub use error::{Error, Result};
pub use host::{system_hostname, Datastore, Host, DEFAULT_NAME_CACHE, HOST_FILE, INVENTORY_FILE};
pub use hostlock::HostLock;
pub use inventory::{Inventory, InventoryEntry, FIRST_MOREF};
pub use lock::{FileLock, LockMode, LOCK_FILE_NAME};
pub use snapshot::{read_vmsd, Cleanup, LockedVm, SnapshotCreated, SnapshotDisk, SnapshotMemory};
pub use specifier::Specifier;
pub use vm::{PowerState, Vm, VmDiskFile, VmRef};
pub use vmops::Destroyed;

/// The QEMU runtime the power operations and live snapshots use.
pub use runtime;
pub use runtime::{PowerOnOptions, PowerOnReport, SuspendReport};
