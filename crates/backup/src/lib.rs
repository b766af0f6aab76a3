//! Consolidated Backup: full-VM export and restore, catalogs, destinations, hooks.
//!
//! # Model
//!
//! A *backup* is one folder holding a VM's configuration files, each of its disks as a
//! compacted hosted sparse VMDK (`scsi0-0-0-<disk>.vmdk`, split in 2 GB extents or
//! monolithic), and a `catalog` (see `vmx::Catalog`) listing every file with its size
//! and SHA-256 plus where the VM lived: datastore paths, folder, resource pool, disk
//! provisioning (the folder layout and rules: `crates/backup/FORMAT.md`). Backups are
//! written through a [`Destination`] ([`LocalDir`] for local folders, [`Sftp`] for
//! `scp://` and `sftp://` URLs).
//!
//! - [`backup_vm`] (vcbMounter, `vcb backup`) takes a snapshot so the base disks become
//!   static, exports them while the VM keeps writing to its redo logs, removes the
//!   snapshot, and writes the catalog last. See [`export`] for the order of work.
//! - [`restore_vm`] (vcbRestore, `vcb restore`) verifies the backup, plans where every
//!   file goes (refusing untrusted paths), settles conflicts by a [`ConflictPolicy`], and
//!   writes under temporary names renamed into place, registering the VM last.
//! - [`backup_group`] (vcbSnapAll) backs up each VM a specifier finds into its own
//!   subfolder.
//! - [`backup_vm_to_repo`], [`backup_group_to_repo`] and [`restore_point`] do the same
//!   with a deduplicating repository (crate `repo`); [`export_point`] writes a point out
//!   as a backup folder.
//!
//! # Invariants
//!
//! - A backup folder is complete only when its catalog exists and its incomplete marker
//!   does not: the marker is written first and removed after the catalog, so a killed
//!   backup is never taken for a finished one, and restore refuses it.
//! - A backup never leaves its snapshot behind on error; a killed one leaves a snapshot
//!   named [`BACKUP_SNAPSHOT_NAME`] that the next backup of the VM commits first.
//! - Nothing is written on a restore target before every file was verified and every
//!   path checked.
//! - The library never prints: it reports through an [`Observer`].
#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod dest;
mod error;
pub mod export;
mod fsutil;
pub mod hash;
pub mod hooks;
pub mod observer;
pub mod remote;
mod repo_export;
pub mod restore;
mod snapall;

pub use dest::{Destination, LocalDir, CATALOG_NAME, INCOMPLETE_MARKER};
pub use error::{Error, Result};
pub use export::hold::{hold_snapshot, release_snapshot, HeldSnapshot, FILE_SNAPSHOT_NAME};
pub use export::proxy::{
    backup_from_proxy, backup_from_proxy_to_repo, clean_after_proxy, open_host_session, FileSource,
    HostSession, ProxyDisk, ProxyManifest, ProxySource,
};
pub use export::{
    backup_vm, backup_vm_to_repo, BackupOptions, BackupReport, ExportFormat, BACKUP_SNAPSHOT_NAME,
};
pub use observer::{Answer, Event, Observer, Recorder};
pub use remote::{RemoteOptions, Sftp};
pub use repo_export::export_point;
pub use restore::{restore_point, restore_vm, ConflictPolicy, RestoreOptions, RestoreReport};
pub use snapall::{
    backup_group, backup_group_to, backup_group_to_repo, backup_members_to, folder_name,
    remote_members, BackupOne, GroupItem, GroupObserver, Member,
};
