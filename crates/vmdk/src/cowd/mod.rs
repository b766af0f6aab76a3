//! ESX redo-log extents ("vmfsSparse", magic `COWD`, data file `NAME-delta.vmdk`).
//!
//! Spec: `/work/shared/specs/vmdk.md` §5. Sources: qemu `block/vmdk.c`
//! (`vmdk_open_vmfs_sparse`, `get_cluster_offset`, `vmdk_pwritev`) and VMware's vmkernel
//! `cow.c` / `cow_ext.h` (ESX 2.x, the only VMware source for the allocator).
//!
//! # Header (2048 bytes, sector 0..4, all integers u32 little-endian)
//!
//! | off  | size | type    | field | meaning | valid values |
//! |------|------|---------|-------|---------|--------------|
//! | 0    | 4    | bytes   | magic | `"COWD"` | exactly |
//! | 4    | 4    | u32 LE  | version | format version | 1 |
//! | 8    | 4    | u32 LE  | flags | 0x1 root (geometry in the union), 0x2 check-capable, 0x4 inconsistent | ESX writes 3 |
//! | 12   | 4    | u32 LE  | numSectors | extent capacity, sectors | any |
//! | 16   | 4    | u32 LE  | granularity | grain size, sectors | power of two 1..=2048; ESX writes 1 |
//! | 20   | 4    | u32 LE  | gdOffset | grain directory, sectors | ≥ 4; ESX and vcb write 4 |
//! | 24   | 4    | u32 LE  | numGDEntries | GD length | ceil(numSectors / (4096 × granularity)), or that rounded up to a whole GD sector (128 entries, what vmkernel `cow.c` computes) |
//! | 28   | 4    | u32 LE  | freeSector | next free sector: a hint, "file length is real truth" (`cow_ext.h`) | ≥ end of the GD |
//! | 32   | 12   | 3×u32   | root: cylinders, heads, sectors | geometry (unused by ESX) | flags & 0x1 |
//! | 32   | 1024 | bytes   | child: parentFileName | NUL-terminated | flags & 0x1 clear |
//! | 1056 | 4    | u32 LE  | child: parentGeneration | | |
//! | 1060 | 4    | u32 LE  | generation | | |
//! | 1064 | 60   | bytes   | name | NUL-terminated | |
//! | 1124 | 512  | bytes   | description | NUL-terminated | |
//! | 1636 | 4    | u32 LE  | savedGeneration | VMFS generation at clean close | |
//! | 1640 | 8    | bytes   | reserved | | |
//! | 1648 | 4    | u32 LE  | uncleanShutdown | set while open for writing | 0 when closed cleanly |
//! | 1652 | 396  | bytes   | padding | | zero |
//!
//! # Grain directory and grain tables
//!
//! The GD holds numGDEntries u32 sector numbers of grain tables (0 = no table yet). Each GT
//! holds 4096 u32 entries (16 KiB) and covers 4096 grains. A GT entry is the sector of the
//! grain's data, or 0: unallocated, reads fall through to the parent. There is no zeroed-grain
//! entry. Lookup: `gt = gd[lba / (4096 × gran)]`, `grain = gt[(lba / gran) % 4096]`.
//!
//! # Layout vcb creates, and why
//!
//! Header (sectors 0..4), GD at sector 4, then **every GT preallocated** (zero-filled holes of a
//! sparse file), then data from `freeSector` (rounded up to a grain). ESX allocates GTs lazily
//! at `freeSector`, but qemu cannot: `get_cluster_offset` returns "unallocated" for a GD entry of
//! 0 even when asked to allocate, and `vmdk_pwritev` then writes to an unset cluster offset
//! (the header corruption the spec §6 warns about). With all GTs present qemu only ever fills GT
//! entries, which it can do. ESX reads such a file as one whose GTs were all allocated earlier.
//!
//! # Allocation (matches qemu)
//!
//! qemu appends each new grain at `ROUND_UP(file length in sectors, granularity)` and never
//! updates `freeSector`; vmkernel trusts `freeSector` only after a clean close. vcb therefore
//! appends at `max(freeSector, EOF, end of GD)` rounded up to a grain, so grains qemu wrote past
//! a stale `freeSector` are never overwritten, and our files' EOF equals `freeSector` so qemu
//! appends exactly where we would. A write to an unallocated grain writes the whole grain: the
//! uncovered part comes from the caller's [`Backing`](crate::extent::Backing)
//! (copy-on-write), as qemu does.
//!
//! # Reading
//!
//! `map` merges grains of one state across GTs; `read_at` coalesces grains that are also
//! contiguous in the file into one pread. GTs are cached (at most 1024 = 16 MiB); tables that
//! hold only zeros are remembered in a flag per GD entry instead, and untouched preallocated
//! tables are recognised as file-system holes with `SEEK_DATA` without reading them, so mapping
//! an empty 256 GiB delta costs a few syscalls, not 2 GiB of reads.
//!
//! # Crash ordering
//!
//! Grain data (and a GT allocated for a GD entry of 0) is written at once; GT entries and GD
//! entries are kept dirty in memory. [`Extent::flush`](crate::extent::Extent::flush) writes
//! data (fdatasync), then the dirty GTs, then dirty GD sectors, then `freeSector`, and fsyncs.
//! A crash therefore loses recent writes but never leaves a GT entry pointing at unwritten data.
//! `uncleanShutdown` is set (and synced) before the first write and cleared by
//! [`Extent::close`](crate::extent::Extent::close) when this handle set it.

mod check;
mod create;
mod extent;
mod header;
mod tables;
mod write;

#[cfg(test)]
mod qemu_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_extent;
#[cfg(test)]
mod tests_fuzz;

pub use check::check;
pub use create::create;
pub use extent::CowdExtent;
pub use header::{is_cowd_file, CowdHeader, CowdLink};

use crate::fileio::PathFile;
use crate::magic::{COWD_GTES_PER_GT, COWD_HEADER_BYTES, SECTOR};
use std::os::fd::AsRawFd;

/// Grain size ESX writes for redo logs, in sectors (`COWDISK_DEFAULT_GRAN` in `cow_ext.h`:
/// one sector, so ESX never has to copy from the parent before a write).
pub const ESX_GRANULARITY_SECTORS: u64 = 1;
/// Largest grain accepted, in sectors (1 MiB; qemu's own limit is 1 GiB, nobody writes more
/// than a few KiB).
pub const MAX_GRANULARITY_SECTORS: u64 = 2048;
/// Header flag: the union holds root geometry rather than a parent file name.
pub const COWD_FLAG_ROOT: u32 = 0x1;
/// Header flag: the file can be checked (`COWDISK_CHECKCAPABLE`).
pub const COWD_FLAG_CHECK_CAPABLE: u32 = 0x2;

/// Header sectors before the GD (`COWDISK_DEFAULT_ROOTOFF`).
const HEADER_SECTORS: u64 = COWD_HEADER_BYTES / SECTOR;
/// Bytes of one grain table.
const GT_BYTES: u64 = COWD_GTES_PER_GT * 4;
/// Sectors of one grain table.
const GT_SECTORS: u64 = GT_BYTES / SECTOR;
/// GD entries per 512-byte sector.
const GD_ENTRIES_PER_SECTOR: u64 = SECTOR / 4;
/// Grain tables kept in memory: 1024 × 16 KiB = 16 MiB.
const GT_CACHE_SLOTS: usize = 1024;
/// Largest run of contiguous grain data gathered before one pwrite.
const MAX_PENDING_BYTES: usize = 4 << 20;
/// Sector numbers are u32; the header's freeSector must fit too.
const MAX_FILE_SECTORS: u64 = u32::MAX as u64;
/// Damaged GD/GT entries `check` lists one by one before only counting them.
const MAX_LISTED_ENTRIES: u64 = 1000;
/// Byte offsets of the header fields rewritten in place.
const OFF_FREE_SECTOR: u64 = 28;
const OFF_UNCLEAN_SHUTDOWN: u64 = 1648;
/// Geometry written into root headers (ESX ignores it; heads/sectors as for non-IDE disks).
const GEOMETRY_HEADS: u32 = 255;
const GEOMETRY_SECTORS: u32 = 63;

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A `usize` for an in-memory index or length already bounded by a u32 field or the GT size.
fn small(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Byte offset of the first data at or after `from` according to the file system
/// (`SEEK_DATA`): `u64::MAX` when only holes follow, `from` when the file system cannot tell.
fn next_data_offset(file: &PathFile, from: u64) -> u64 {
    let Ok(offset) = libc::off_t::try_from(from) else {
        return from;
    };
    // SAFETY: lseek has no memory-safety preconditions; the descriptor stays open for the call
    // (borrowed from `file`). It moves the file position, which this module never uses: all
    // I/O here is positional (pread/pwrite).
    let found = unsafe { libc::lseek(file.file().as_raw_fd(), offset, libc::SEEK_DATA) };
    if found >= 0 {
        return u64::try_from(found).unwrap_or(from);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => u64::MAX,
        _ => from,
    }
}

fn granularity_ok(g: u64) -> bool {
    (1..=MAX_GRANULARITY_SECTORS).contains(&g) && g.is_power_of_two()
}

/// GD entries needed to cover `num_sectors` with `granularity` (> 0) sector grains.
fn gd_entries_needed(num_sectors: u64, granularity: u64) -> u64 {
    num_sectors.div_ceil(COWD_GTES_PER_GT * granularity)
}
