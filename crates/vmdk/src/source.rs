//! What a disk copy reads from: any disk image that can say which ranges hold data.
//!
//! Conversion and export ([`crate::convert`], [`crate::export_sparse`]) only need a
//! capacity, an allocation map and positional reads. An opened VMDK chain ([`Disk`]) is
//! one such source; a disk stored in vcb's repository is another, so a restore from the
//! repository goes through the same copy code as a restore from a folder of VMDKs.

use crate::create::AdapterType;
use crate::disk::{Disk, Run};
use crate::error::Result;

/// A readable disk image with an allocation map.
pub trait DiskSource: Send {
    /// Size of the disk in bytes.
    fn capacity(&self) -> u64;

    /// The state of the range starting at `offset`: the longest run (at most `max_len`
    /// bytes, never past the capacity) in one [`crate::BlockState`].
    ///
    /// # Errors
    /// Read errors of the underlying storage; corrupt metadata.
    fn map(&mut self, offset: u64, max_len: u64) -> Result<Run>;

    /// Fill `buf` with the bytes at `offset` (ranges without data read as zeros).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for a range past the capacity; read errors.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The controller type the disk was made for (`ddb.adapterType`), kept when the disk
    /// is copied.
    fn adapter(&self) -> AdapterType {
        AdapterType::default()
    }
}

impl DiskSource for Disk {
    fn capacity(&self) -> u64 {
        Disk::capacity(self)
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<Run> {
        Disk::map(self, offset, max_len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Disk::read_at(self, offset, buf)
    }

    fn adapter(&self) -> AdapterType {
        self.links()[0]
            .descriptor()
            .ddb_value("ddb.adapterType")
            .and_then(|a| AdapterType::parse(a).ok())
            .unwrap_or_default()
    }
}
