//! Creating hosted sparse extents (qemu's layout) and the embedded descriptor.

use super::{len64, SparseHeader, GT_SECTORS, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{
    DEFAULT_GRAIN_SECTORS, EMBEDDED_DESCRIPTOR_SECTORS, KDMV_FLAG_NEWLINE_VALID,
    KDMV_FLAG_REDUNDANT_GD, KDMV_FLAG_ZEROED_GTE, KDMV_GTES_PER_GT, KDMV_MAGIC, KDMV_NEWLINE_TEST,
    MAX_CAPACITY_BYTES, SECTOR,
};
use fsio::sync_dir;
use std::path::Path;

/// Largest embedded descriptor read or written, sectors (64 KiB).
const MAX_DESCRIPTOR_SECTORS: u64 = 128;
/// Grain table entries address sectors with a u32: a hosted sparse file stays below 2 TiB.
const MAX_FILE_SECTORS: u64 = 1 << 32;

/// Options for [`create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSparse {
    /// Grain size in sectors: a power of two, 1..=2048 (128 = 64 KiB is what everyone uses).
    pub grain_sectors: u64,
    /// Descriptor text to embed at sector 1 (20 sectors reserved). `None` for the pieces of
    /// a twoGbMaxExtentSparse disk, whose descriptor is a separate file.
    pub embedded_descriptor: Option<String>,
    /// Allow GTE value 1 ("zeroed grain"); makes the header version 2.
    pub zeroed_grain_gtes: bool,
}

impl Default for CreateSparse {
    fn default() -> Self {
        CreateSparse {
            grain_sectors: DEFAULT_GRAIN_SECTORS,
            embedded_descriptor: None,
            zeroed_grain_gtes: false,
        }
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {what}", path.display()))
}

/// Create an empty hosted sparse extent at `path` (which must not exist) holding
/// `capacity_bytes` (a multiple of 512), laid out as qemu does: header, descriptor at
/// sector 1 (20 sectors, NUL padded; only when embedded), redundant GD, redundant GTs, GD,
/// GTs (all preallocated and zero), first grain at overHead rounded up to a grain. Flags
/// 0x3 (| 0x4 and version 2 with zeroed-grain GTEs). The file and its folder are fsynced;
/// on failure the partial file is removed.
///
/// # Errors
/// [`Error::AlreadyExists`]; [`Error::InvalidArgument`] for a capacity that is not a
/// multiple of 512, above 64 TiB or too large for one sparse file (2 TiB), a bad grain
/// size, or a descriptor that does not fit its 10 KiB (or contains a NUL); [`Error::Io`].
pub fn create(path: &Path, capacity_bytes: u64, opts: &CreateSparse) -> Result<()> {
    let header = plan(path, capacity_bytes, opts)?;
    let file = PathFile::create_new(path)?;
    let written = write_layout(&file, &header, opts.embedded_descriptor.as_deref());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(sync_dir(dir)?)
}

/// Validate the options and compute the header (also used by [`crate::export`]).
pub(crate) fn plan(path: &Path, capacity_bytes: u64, opts: &CreateSparse) -> Result<SparseHeader> {
    let gs = opts.grain_sectors;
    if gs == 0 || !gs.is_power_of_two() || gs > super::header::MAX_GRAIN_SECTORS {
        return Err(invalid(
            path,
            format_args!("grain size {gs} sectors is not a power of two in 1..=2048"),
        ));
    }
    if !capacity_bytes.is_multiple_of(SECTOR) || capacity_bytes > MAX_CAPACITY_BYTES {
        return Err(invalid(
            path,
            format_args!("capacity {capacity_bytes} is not a multiple of 512 up to 64 TiB"),
        ));
    }
    let desc_sectors = match &opts.embedded_descriptor {
        Some(d) if d.len() >= descriptor_room() || d.contains('\0') => {
            let msg = format_args!(
                "descriptor of {} bytes does not fit the {} bytes reserved",
                d.len(),
                descriptor_room()
            );
            return Err(invalid(path, msg));
        }
        Some(_) => EMBEDDED_DESCRIPTOR_SECTORS,
        None => 0,
    };
    let capacity_sectors = capacity_bytes / SECTOR;
    let gd_entries = capacity_sectors.div_ceil(gs * KDMV_GTES_PER_GT);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let rgd = 1 + desc_sectors;
    let gd = rgd + gd_sectors + GT_SECTORS * gd_entries;
    let overhead = (gd + gd_sectors + GT_SECTORS * gd_entries).next_multiple_of(gs);
    if overhead + capacity_sectors.next_multiple_of(gs) > MAX_FILE_SECTORS {
        let msg = "a hosted sparse extent holds at most 2 TiB (use twoGbMaxExtentSparse pieces)";
        return Err(invalid(path, msg));
    }
    let zeroed = opts.zeroed_grain_gtes;
    Ok(SparseHeader {
        version: if zeroed { 2 } else { 1 },
        flags: KDMV_FLAG_NEWLINE_VALID
            | KDMV_FLAG_REDUNDANT_GD
            | if zeroed { KDMV_FLAG_ZEROED_GTE } else { 0 },
        capacity_sectors,
        grain_sectors: gs,
        descriptor_offset_sectors: if desc_sectors > 0 { 1 } else { 0 },
        descriptor_size_sectors: desc_sectors,
        num_gtes_per_gt: 512,
        rgd_offset_sectors: rgd,
        gd_offset_sectors: gd,
        overhead_sectors: overhead,
        unclean_shutdown: false,
        newline_test: KDMV_NEWLINE_TEST,
        compress_algorithm: 0,
    })
}

fn descriptor_room() -> usize {
    usize::try_from(EMBEDDED_DESCRIPTOR_SECTORS * SECTOR).unwrap_or(0)
}

/// A grain directory whose tables follow it back to back: entries `first + 4·i`.
pub(crate) fn directory_bytes(entries: u64, first_table: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(usize::try_from(entries * 4).unwrap_or(0));
    for i in 0..entries {
        // `plan` keeps the whole file below 2^32 sectors.
        let sector = u32::try_from(first_table + GT_SECTORS * i).unwrap_or(0);
        v.extend_from_slice(&sector.to_le_bytes());
    }
    v
}

fn write_layout(file: &PathFile, h: &SparseHeader, descriptor: Option<&str>) -> Result<()> {
    let n = h.gd_entries();
    let gd_sectors = (n * 4).div_ceil(SECTOR);
    file.set_len(h.overhead_sectors * SECTOR)?;
    if let Some(d) = descriptor {
        file.write_all_at(d.as_bytes(), h.descriptor_offset_sectors * SECTOR)?;
    }
    let rgd = directory_bytes(n, h.rgd_offset_sectors + gd_sectors);
    file.write_all_at(&rgd, h.rgd_offset_sectors * SECTOR)?;
    let gd = directory_bytes(n, h.gd_offset_sectors + gd_sectors);
    file.write_all_at(&gd, h.gd_offset_sectors * SECTOR)?;
    file.sync_data()?;
    // Header last: a crash before this point leaves no valid sparse file.
    file.write_all_at(&h.to_bytes(), 0)?;
    file.sync_all()
}

fn read_header(file: &PathFile) -> Result<SparseHeader> {
    let mut hb = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut hb, 0, "sparse extent header")?;
    SparseHeader::parse(&hb, file.path())
}

/// Byte offset and size of the reserved descriptor space, or `None` when there is none.
fn descriptor_area(file: &PathFile, h: &SparseHeader) -> Result<Option<(u64, u64)>> {
    if h.descriptor_offset_sectors == 0 || h.descriptor_size_sectors == 0 {
        return Ok(None);
    }
    let path = file.path();
    if h.descriptor_size_sectors > MAX_DESCRIPTOR_SECTORS {
        let v = h.descriptor_size_sectors;
        return Err(super::header::bad(
            path,
            "descriptorSize",
            v,
            "embedded descriptor larger than 64 KiB",
        ));
    }
    let size = h.descriptor_size_sectors * SECTOR;
    let file_len = file.len()?;
    let offset = h.descriptor_offset_sectors.saturating_mul(SECTOR);
    if !matches!(offset.checked_add(size), Some(end) if end <= file_len) {
        let path = path.to_path_buf();
        return Err(Error::Truncated {
            path,
            what: "embedded descriptor",
            offset,
            file_len,
        });
    }
    Ok(Some((offset, size)))
}

/// The descriptor embedded in the sparse extent at `path`: its bytes up to the first NUL.
/// `None` when the header reserves no descriptor space or the space is empty (the pieces
/// of twoGbMaxExtentSparse disks).
///
/// # Errors
/// [`Error::BadHeader`] (also for a descriptor space above 64 KiB), [`Error::Truncated`],
/// [`Error::BadDescriptor`] when the text is not UTF-8, [`Error::Io`].
pub fn read_embedded_descriptor(path: &Path) -> Result<Option<String>> {
    read_embedded_descriptor_of(&PathFile::open(path, false)?)
}

/// [`read_embedded_descriptor`] of an open file.
pub(crate) fn read_embedded_descriptor_of(file: &PathFile) -> Result<Option<String>> {
    let path = file.path();
    let h = read_header(file)?;
    let Some((offset, size)) = descriptor_area(file, &h)? else {
        return Ok(None);
    };
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    file.read_exact_at(&mut buf, offset, "embedded descriptor")?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(end);
    if buf.is_empty() {
        return Ok(None);
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|e| Error::BadDescriptor {
            path: path.to_path_buf(),
            line: 0,
            reason: format!(
                "embedded descriptor is not UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
            text: String::new(),
        })
}

/// Replace the embedded descriptor of the sparse extent at `path` in place (NUL padded to
/// the reserved space, fsynced).
///
/// # Errors
/// [`Error::Unsupported`] when no space is reserved or `text` does not fit (one NUL must
/// remain); [`Error::InvalidArgument`] when `text` contains a NUL; header errors as for
/// [`read_embedded_descriptor`]; [`Error::Io`].
pub fn write_embedded_descriptor(path: &Path, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(invalid(path, "descriptor text contains a NUL byte"));
    }
    let file = PathFile::open(path, true)?;
    let h = read_header(&file)?;
    let Some((offset, size)) = descriptor_area(&file, &h)? else {
        return Err(Error::unsupported(
            path,
            "the sparse extent reserves no space for an embedded descriptor",
        ));
    };
    if len64(text.len()) >= size {
        let reason = format!(
            "descriptor of {} bytes does not fit the {size} bytes reserved",
            text.len()
        );
        return Err(Error::unsupported(path, reason));
    }
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
    buf[..text.len()].copy_from_slice(text.as_bytes());
    file.write_all_at(&buf, offset)?;
    file.sync_all()
}

/// Whether the file at `path` starts with the KDMV magic (a file shorter than 4 bytes is not).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or read.
pub fn is_sparse_file(path: &Path) -> Result<bool> {
    let file = PathFile::open(path, false)?;
    if file.len()? < 4 {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0, "magic")?;
    Ok(magic == KDMV_MAGIC)
}

/// The capacity recorded in the sparse header at `path`, bytes.
///
/// # Errors
/// As [`SparseHeader::parse`], plus [`Error::Io`] / [`Error::Truncated`] reading it.
pub fn header_capacity_bytes(path: &Path) -> Result<u64> {
    header_capacity_bytes_of(&PathFile::open(path, false)?)
}

/// [`header_capacity_bytes`] of an open file.
pub(crate) fn header_capacity_bytes_of(file: &PathFile) -> Result<u64> {
    Ok(read_header(file)?.capacity_bytes())
}
