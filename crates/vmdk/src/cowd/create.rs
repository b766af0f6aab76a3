//! [`create()`]: a new, empty redo-log data file with every grain table preallocated.

use super::{
    gd_entries_needed, granularity_ok, small, CowdHeader, CowdLink, COWD_FLAG_CHECK_CAPABLE,
    COWD_FLAG_ROOT, GEOMETRY_HEADS, GEOMETRY_SECTORS, GT_SECTORS, HEADER_SECTORS,
};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{COWD_VERSION, SECTOR};
use std::path::Path;

/// Create a new, empty redo-log data file (`NAME-delta.vmdk`) of `capacity_bytes` with grains
/// of `granularity_sectors` ([`ESX_GRANULARITY_SECTORS`](super::ESX_GRANULARITY_SECTORS) is
/// what ESX writes): header, GD at sector 4, every GT preallocated (so qemu can write into it,
/// see the module docs), data from `freeSector`. The file is fsynced, and its directory too.
///
/// # Errors
/// [`Error::InvalidArgument`] if the capacity is 0, not a multiple of 512 or above 2^32 − 1
/// sectors, or the granularity is not a power of two in 1..=2048; [`Error::AlreadyExists`] if
/// `path` exists; [`Error::Io`] on write failure (the partial file is removed).
pub fn create(path: &Path, capacity_bytes: u64, granularity_sectors: u64) -> Result<()> {
    let (header, gd) = fresh_layout(path, capacity_bytes, granularity_sectors)?;
    let file = PathFile::create_new(path)?;
    let written = write_fresh(&file, &header, &gd);
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Header and GD bytes of a fresh extent (see [`create`] for the errors).
pub(super) fn fresh_layout(
    path: &Path,
    capacity_bytes: u64,
    granularity_sectors: u64,
) -> Result<(CowdHeader, Vec<u8>)> {
    let invalid = |why: &str| {
        Error::InvalidArgument(format!(
            "{}: cannot create COWD extent: {why}",
            path.display()
        ))
    };
    // `is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    let partial_sector = capacity_bytes % SECTOR != 0;
    if capacity_bytes == 0 || partial_sector {
        return Err(invalid("capacity must be a non-zero multiple of 512 bytes"));
    }
    let num_sectors = u32::try_from(capacity_bytes / SECTOR)
        .map_err(|_| invalid("capacity exceeds 2^32 - 1 sectors"))?;
    if !granularity_ok(granularity_sectors) {
        return Err(invalid(
            "granularity must be a power of two from 1 to 2048 sectors",
        ));
    }
    let gd_entries = gd_entries_needed(u64::from(num_sectors), granularity_sectors);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let first_gt = HEADER_SECTORS + gd_sectors;
    let free_sector = (first_gt + gd_entries * GT_SECTORS).next_multiple_of(granularity_sectors);
    let too_big = |_| invalid("metadata would not fit 32-bit sector numbers");
    let header = CowdHeader {
        version: COWD_VERSION,
        flags: COWD_FLAG_ROOT | COWD_FLAG_CHECK_CAPABLE,
        num_sectors,
        granularity_sectors: u32::try_from(granularity_sectors).map_err(too_big)?,
        gd_offset_sectors: u32::try_from(HEADER_SECTORS).map_err(too_big)?,
        num_gd_entries: u32::try_from(gd_entries).map_err(too_big)?,
        free_sector: u32::try_from(free_sector).map_err(too_big)?,
        link: CowdLink::Root {
            cylinders: num_sectors / (GEOMETRY_HEADS * GEOMETRY_SECTORS),
            heads: GEOMETRY_HEADS,
            sectors: GEOMETRY_SECTORS,
        },
        generation: 0,
        name: [0; 60],
        description: [0; 512],
        saved_generation: 0,
        reserved: [0; 8],
        unclean_shutdown: 0,
    };
    let mut gd = Vec::with_capacity(small(gd_entries * 4));
    for i in 0..gd_entries {
        let gt = u32::try_from(first_gt + i * GT_SECTORS).map_err(too_big)?;
        gd.extend_from_slice(&gt.to_le_bytes());
    }
    Ok((header, gd))
}

fn write_fresh(file: &PathFile, header: &CowdHeader, gd: &[u8]) -> Result<()> {
    file.write_all_at(&header.to_bytes(), 0)?;
    file.write_all_at(gd, u64::from(header.gd_offset_sectors) * SECTOR)?;
    // The GTs stay holes of zeros; EOF = freeSector, so qemu appends where we would.
    file.set_len(u64::from(header.free_sector) * SECTOR)?;
    file.sync_all()?;
    let dir = file
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(fsio::sync_dir(dir)?)
}
