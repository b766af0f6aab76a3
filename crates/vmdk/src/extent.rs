//! The extent abstraction every on-disk layout implements.
//!
//! A *link* of a chain (one descriptor) is a row of extents laid end to end. Each extent
//! answers three questions about a byte range (relative to its own start): what state is it
//! in ([`BlockState`]), what bytes does it hold, and how to write new bytes. Extents never
//! look at other links: copy-on-write data for partial grains is supplied by the caller
//! through [`Backing`].

use crate::error::Result;
use std::path::PathBuf;

/// The state of a byte range in one link of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockState {
    /// The link holds data for the range (which may happen to be zero bytes).
    Data,
    /// The link records the range as zero; reads do not fall through to a parent.
    Zero,
    /// The link holds nothing; reads fall through to the parent (or read zero at the base).
    Unallocated,
}

/// Source of the data below an extent, for copy-on-write of partially written grains.
/// Offsets are relative to the start of the extent asking.
pub trait Backing {
    /// Fill `buf` with the bytes the chain below holds at `offset`.
    fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Backing for a link with no parent: everything below reads as zeros.
pub struct ZeroBacking;

impl Backing for ZeroBacking {
    fn read_backing(&mut self, _offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
}

/// One extent of a link. Offsets and lengths are bytes relative to the extent's start and
/// always lie within `len_bytes()`; callers check bounds.
pub trait Extent: Send {
    /// Size of the extent in bytes (the descriptor's sector count × 512).
    fn len_bytes(&self) -> u64;

    /// The state of the longest run starting at `offset` with one state, at most `max_len`
    /// bytes long. The returned length is at least 1 when `max_len` is at least 1.
    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)>;

    /// Read bytes. Ranges that are not `Data` read as zeros.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Write bytes. A grain-based extent that must allocate a grain the write covers only
    /// partly fills the rest from `backing`.
    fn write_at(&mut self, offset: u64, data: &[u8], backing: &mut dyn Backing) -> Result<()>;

    /// Make persistent everything written so far (data before metadata).
    fn flush(&mut self) -> Result<()>;

    /// Flush and mark the extent cleanly closed (clears `uncleanShutdown` where the format has it).
    fn close(&mut self) -> Result<()> {
        self.flush()
    }

    /// The files this extent occupies (empty for ZERO extents).
    fn files(&self) -> Vec<PathBuf>;

    /// Bytes of the underlying file(s) actually allocated on the host file system.
    fn allocated_file_bytes(&self) -> u64;
}

/// An extent of type ZERO: reads zeros, has no file, cannot be written.
pub struct ZeroExtent {
    pub(crate) len_bytes: u64,
    pub(crate) descriptor: PathBuf,
}

impl Extent for ZeroExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
    fn map(&mut self, _offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        Ok((BlockState::Zero, max_len))
    }
    fn read_at(&mut self, _offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&mut self, _offset: u64, _data: &[u8], _backing: &mut dyn Backing) -> Result<()> {
        Err(crate::Error::ReadOnly {
            path: self.descriptor.clone(),
            reason: "ZERO extents cannot be written",
        })
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn allocated_file_bytes(&self) -> u64 {
        0
    }
}
