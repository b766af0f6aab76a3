//! Hosted sparse extents ("KDMV"): monolithicSparse, the `-s001.vmdk` pieces of
//! twoGbMaxExtentSparse, hosted-sparse snapshot children, and (read-only) streamOptimized.
//!
//! Source: VMware Virtual Disk Format 1.1 §"Hosted Sparse Extent Header"; qemu
//! `block/vmdk.c`; project fact sheet `vmdk.md` §1–§2.
//!
//! # Header (sector 0; 512 bytes, little-endian, packed — parsed field by field)
//!
//! | off | size | type | field | meaning | valid values |
//! |---|---|---|---|---|---|
//! | 0 | 4 | bytes | magic | `KDMV` | exactly `4B 44 4D 56` |
//! | 4 | 4 | u32 | `version` | format version | 1, 2 (zeroed-grain GTEs), 3 (stream / CBT: read-only unless compressed) |
//! | 8 | 4 | u32 | `flags` | 0x1 newline test valid, 0x2 redundant GD, 0x4 zeroed-grain GTE, 0x10000 compressed, 0x20000 markers | unknown bits of the high 16 (incompatible) refused |
//! | 12 | 8 | u64 | `capacity_sectors` | virtual size, sectors | ≤ `MAX_CAPACITY_BYTES` / 512 |
//! | 20 | 8 | u64 | `grain_sectors` | grain size, sectors | power of two, 1..=2048 (128 = 64 KiB is usual) |
//! | 28 | 8 | u64 | `descriptor_offset_sectors` | embedded descriptor | 0 = none; qemu: 1 |
//! | 36 | 8 | u64 | `descriptor_size_sectors` | descriptor space, NUL padded | ≤ 128; qemu: 20 |
//! | 44 | 4 | u32 | `num_gtes_per_gt` | entries per grain table | 512 |
//! | 48 | 8 | u64 | `rgd_offset_sectors` | redundant grain directory | used when flag 0x2 |
//! | 56 | 8 | u64 | `gd_offset_sectors` | grain directory | `u64::MAX` = at end (read the footer) |
//! | 64 | 8 | u64 | `overhead_sectors` | metadata before the first grain | ≤ file length |
//! | 72 | 1 | u8 | `unclean_shutdown` | set while open for writing | 0 / 1 |
//! | 73 | 4 | bytes | `newline_test` | `0A 20 0D 0A` | checked when flag 0x1 |
//! | 77 | 2 | u16 | `compress_algorithm` | 0 none, 1 deflate (zlib stream) | 0, 1 |
//! | 79 | 433 | – | pad | zero | |
//!
//! # Grain lookup
//! The grain directory (GD, `gd_entries = ceil(capacity / (512 × grain))` u32 sector
//! numbers) points at grain tables (GT, 512 u32 entries = 2 KiB, covering 512 grains).
//! `gt = gd[lba / (512·g)]`, `gte = gt[(lba / g) % 512]`. GTE 0 = unallocated (falls
//! through to the parent), GTE 1 with flag 0x4 = zeroed grain (reads zero, no fall-through),
//! otherwise the grain's first sector. A GD entry 0 means the whole table is unallocated.
//! In compressed (stream) files a GTE points at a grain marker (`u64 lba, u32 size`,
//! then a zlib stream; see [`crate::stream`]).
//!
//! # Layout written by [`create()`] (qemu's)
//! header · descriptor (sectors 1..=20, only when embedded) · RGD · redundant GTs · GD ·
//! GTs (all preallocated and zero) · first grain at `overHead` (rounded up to a grain).
//! New grains are appended at EOF rounded up to a grain.
//!
//! # Crash safety of writes
//! The first write sets `uncleanShutdown` (fsynced). Grain data is written first; GT
//! updates stay in memory until [`Extent::flush`], which fdatasyncs the data, writes the
//! primary GTs, fdatasyncs, writes the redundant GTs and fsyncs. [`Extent::close`] then
//! clears `uncleanShutdown` (header last). A crash leaves either old or new GT entries,
//! both pointing at complete grains; the flag stays set as the crash signal. If the flag
//! was already set when the extent was opened (an earlier crash), close leaves it set:
//! only [`check()`] with repair certifies the metadata again.

mod check;
mod compressed;
mod create;
mod footer;
mod gt_cache;
mod header;
mod lookup;
mod read;
mod write;

#[cfg(test)]
mod qemu_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_repair;

pub use check::check;
pub use create::{
    create, header_capacity_bytes, is_sparse_file, read_embedded_descriptor,
    write_embedded_descriptor, CreateSparse,
};
pub use header::SparseHeader;

pub(crate) use create::{
    directory_bytes, header_capacity_bytes_of, plan, read_embedded_descriptor_of,
};
pub(crate) use gt_cache::DEFAULT_MAX_TABLES;

pub(crate) use header::{le_u32, le_u64, GT_BYTES, GT_SECTORS, HEADER_BYTES};

use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::PathFile;
use crate::magic::SECTOR;
use std::path::{Path, PathBuf};

/// An open hosted sparse extent. Implements [`Extent`]; see the module documentation.
pub struct SparseExtent {
    file: PathFile,
    /// The effective header (for stream files with the GD at the end: the footer's copy).
    header: SparseHeader,
    len_bytes: u64,
    capacity_bytes: u64,
    grain_bytes: u64,
    file_len: u64,
    /// The grain directory in use (the redundant one when the primary is unusable).
    gd: Vec<u32>,
    /// The redundant grain directory, kept in step by writes.
    rgd: Option<Vec<u32>>,
    /// Byte offset of `gd` and `rgd` in the file (for GD entry updates).
    gd_offset_bytes: u64,
    rgd_offset_bytes: u64,
    cache: gt_cache::GtCache,
    /// Decompression state, for compressed (stream) extents only.
    compressed: Option<Box<compressed::Inflater>>,
    writable: bool,
    unclean_at_open: bool,
    marked_unclean: bool,
    /// Grain data written since the last fdatasync.
    unsynced: bool,
    /// Grain data written since writeback was last started.
    unkicked_bytes: u64,
    closed: bool,
    /// Reused buffer for copy-on-write of partially written new grains.
    scratch: Vec<u8>,
    /// Grain-data preads and pwrites issued (tests assert coalescing).
    #[cfg(test)]
    io_calls: (u64, u64),
}

/// A buffer length as u64 (lossless on every supported target).
pub(crate) fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What a grain table entry says about one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gte {
    Unallocated,
    Zero,
    /// Data at this sector (for compressed extents: the grain marker's sector).
    Data(u64),
}

impl Gte {
    fn from_raw(raw: u32, zeroed_gte: bool) -> Gte {
        match raw {
            0 => Gte::Unallocated,
            1 if zeroed_gte => Gte::Zero,
            s => Gte::Data(u64::from(s)),
        }
    }

    fn state(self) -> BlockState {
        match self {
            Gte::Unallocated => BlockState::Unallocated,
            Gte::Zero => BlockState::Zero,
            Gte::Data(_) => BlockState::Data,
        }
    }
}

impl SparseExtent {
    /// Open the hosted sparse extent at `path`. `len_bytes` is the extent's size from the
    /// descriptor; bytes between the header's capacity and `len_bytes` read as zero.
    ///
    /// # Errors
    /// [`Error::Io`] on open/read failures, [`Error::BadHeader`] for an invalid header,
    /// [`Error::Truncated`] when the header, grain directory or first grain lies past EOF,
    /// [`Error::Corrupt`] for a stream file without footer or grain directory ("incomplete
    /// stream") and for a writable open whose primary grain directory is unusable.
    pub fn open(path: &Path, len_bytes: u64, writable: bool) -> Result<Self> {
        SparseExtent::from_file(
            PathFile::open(path, writable)?,
            len_bytes,
            gt_cache::DEFAULT_MAX_TABLES,
        )
    }

    /// The extent over the open `file` (writable when the file was opened so), caching
    /// at most `gt_cache_tables` grain tables. Only the part of the grain directory that
    /// covers `len_bytes` is read: a descriptor naming a huge sparse file for a small
    /// extent costs little memory.
    ///
    /// # Errors
    /// As for [`SparseExtent::open`].
    pub fn from_file(file: PathFile, len_bytes: u64, gt_cache_tables: usize) -> Result<Self> {
        let writable = file.writable();
        let path = &file.path().to_path_buf();
        let file_len = file.len()?;
        let mut hb = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut hb, 0, "sparse extent header")?;
        let mut header = SparseHeader::parse(&hb, path)?;
        let unclean_at_open = header.unclean_shutdown;
        if header.gd_at_end() {
            header = footer::locate_footer(&file, &header, file_len)?;
        }
        let overhead_bytes = header.overhead_sectors.saturating_mul(SECTOR);
        if overhead_bytes > file_len {
            let what = "first grain (overHead)";
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                what,
                offset: overhead_bytes,
                file_len,
            });
        }
        let dirs = lookup::load_directories(&file, &header, file_len, len_bytes)?;
        if dirs.fallback && writable {
            let reason = "primary grain directory unusable (reading the redundant one); repair with check before writing";
            return Err(Error::corrupt(path, reason));
        }
        let gd_len = dirs.gd.len();
        Ok(SparseExtent {
            len_bytes,
            capacity_bytes: header.capacity_bytes(),
            grain_bytes: header.grain_bytes(),
            file_len,
            gd: dirs.gd,
            rgd: dirs.rgd,
            gd_offset_bytes: dirs.gd_offset_bytes,
            rgd_offset_bytes: dirs.rgd_offset_bytes,
            cache: gt_cache::GtCache::new(gd_len, gt_cache_tables.min(gd_len.max(1))),
            compressed: header
                .is_compressed()
                .then(|| Box::new(compressed::Inflater::new(&header))),
            header,
            file,
            writable,
            unclean_at_open,
            marked_unclean: false,
            unsynced: false,
            unkicked_bytes: 0,
            closed: false,
            scratch: Vec::new(),
            #[cfg(test)]
            io_calls: (0, 0),
        })
    }

    /// The effective header (for stream files: the footer's copy, with the real gdOffset).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The extent file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    #[cfg(test)]
    pub(crate) fn set_gt_cache_limit(&mut self, tables: usize) {
        self.cache = gt_cache::GtCache::new(self.gd.len(), tables);
    }
}

impl Extent for SparseExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        self.map_run(offset, max_len)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_bytes(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8], backing: &mut dyn Backing) -> Result<()> {
        self.write_bytes(offset, data, backing)
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_tables()
    }

    fn close(&mut self) -> Result<()> {
        self.close_extent()
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.file.path().to_path_buf()]
    }

    fn allocated_file_bytes(&self) -> u64 {
        self.file.allocated_bytes()
    }
}

impl Drop for SparseExtent {
    fn drop(&mut self) {
        // Best effort: persist the grain tables so written data is reachable, but leave
        // uncleanShutdown set (close was not called: that is the crash signal).
        if self.writable && !self.closed {
            let _ = self.flush_tables();
        }
    }
}
