//! Guest file systems, read-only and in user space: a disk's partitions (MBR, GPT), LVM2
//! logical volumes on them, and the FAT, NTFS, ext2/3/4 and XFS file systems inside.
//!
//! A hostile guest controls every byte read here: nothing trusts a length, offset or count
//! without checking it against the volume, walks are bounded, and every failure is an
//! [`Error`] for the one file or volume concerned. The host kernel never mounts these.

mod device;
mod error;
pub mod ext4;
pub mod fat;
pub mod lvm;
pub mod ntfs;
pub mod part;
mod runs;
pub mod vfs;
mod volumes;
pub mod xfs;

pub use device::{Device, DiskDevice, FileDevice, MemDevice, Slice};
pub use error::{Error, Result};
pub use vfs::{lookup, walk, Attr, DirEntry, FileSystem, Kind, Time, Walked};
pub use volumes::{open_file_system, volumes, Volume};
