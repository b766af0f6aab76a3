//! Grain directory loading and grain table lookup (through the bounded cache).

use super::{le_u32, Gte, SparseExtent, SparseHeader, GT_BYTES, GT_SECTORS};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{KDMV_GTES_PER_GT, SECTOR};

/// Grain tables read in one pread when they lie back to back in the file (64 KiB).
const READ_AHEAD_TABLES: usize = 32;
/// Entries per grain table, as usize.
pub(crate) const GTES: usize = KDMV_GTES_PER_GT as usize;

/// The directories chosen at open.
pub(crate) struct Directories {
    pub(crate) gd: Vec<u32>,
    pub(crate) rgd: Option<Vec<u32>>,
    pub(crate) gd_offset_bytes: u64,
    pub(crate) rgd_offset_bytes: u64,
    /// The primary GD was unusable and `gd` is the redundant one.
    pub(crate) fallback: bool,
}

/// Read a grain directory of `entries` u32 at `offset_sectors`, checking that it lies
/// within the file before allocating.
pub(crate) fn read_directory(
    file: &PathFile,
    offset_sectors: u64,
    entries: u64,
    file_len: u64,
    what: &'static str,
) -> Result<Vec<u32>> {
    let offset = offset_sectors.saturating_mul(SECTOR);
    let bytes = entries.saturating_mul(4);
    if !matches!(offset.checked_add(bytes), Some(end) if end <= file_len) {
        return Err(Error::Truncated {
            path: file.path().to_path_buf(),
            what,
            offset,
            file_len,
        });
    }
    let len = usize::try_from(bytes)
        .map_err(|_| Error::corrupt(file.path(), "grain directory too large"))?;
    let mut raw = vec![0u8; len];
    file.read_exact_at(&mut raw, offset, what)?;
    Ok(raw.chunks_exact(4).map(|c| le_u32(c, 0)).collect())
}

/// Whether every non-zero entry of a directory names a grain table inside the file.
pub(crate) fn directory_sane(gd: &[u32], file_len: u64) -> bool {
    gd.iter()
        .all(|&s| s == 0 || u64::from(s) * SECTOR + GT_BYTES <= file_len)
}

/// Choose the grain directory: the primary when usable, else the redundant one.
pub(crate) fn load_directories(
    file: &PathFile,
    h: &SparseHeader,
    file_len: u64,
    len_bytes: u64,
) -> Result<Directories> {
    // Only the tables covering the extent's own length (the descriptor's) are needed.
    let table_bytes = h.grain_bytes().saturating_mul(KDMV_GTES_PER_GT).max(1);
    let n = h.gd_entries().min(len_bytes.div_ceil(table_bytes).max(1));
    let gd_offset_bytes = h.gd_offset_sectors.saturating_mul(SECTOR);
    let rgd_offset_bytes = h.rgd_offset_sectors.saturating_mul(SECTOR);
    let primary = read_directory(file, h.gd_offset_sectors, n, file_len, "grain directory");
    let redundant = if h.has_redundant_gd() {
        read_directory(
            file,
            h.rgd_offset_sectors,
            n,
            file_len,
            "redundant grain directory",
        )
        .ok()
    } else {
        None
    };
    let redundant = redundant.filter(|r| directory_sane(r, file_len));
    match primary {
        Ok(gd) if directory_sane(&gd, file_len) => Ok(Directories {
            gd,
            rgd: redundant,
            gd_offset_bytes,
            rgd_offset_bytes,
            fallback: false,
        }),
        primary => match (redundant, primary) {
            (Some(r), _) => Ok(Directories {
                gd: r,
                rgd: None,
                gd_offset_bytes: rgd_offset_bytes,
                rgd_offset_bytes: 0,
                fallback: true,
            }),
            // Unusable entries then fail lazily, naming the table, when read.
            (None, Ok(gd)) => Ok(Directories {
                gd,
                rgd: None,
                gd_offset_bytes,
                rgd_offset_bytes,
                fallback: false,
            }),
            (None, Err(e)) => Err(e),
        },
    }
}

/// Split a grain index into (GD index, GT entry index).
pub(crate) fn split_grain(grain: u64) -> (u64, usize) {
    let idx = usize::try_from(grain % KDMV_GTES_PER_GT).unwrap_or(0);
    (grain / KDMV_GTES_PER_GT, idx)
}

impl SparseExtent {
    /// The grain table entry of `grain`, classified.
    pub(crate) fn gte(&mut self, grain: u64) -> Result<Gte> {
        let (gt, idx) = split_grain(grain);
        let Ok(gt) = usize::try_from(gt) else {
            return Ok(Gte::Unallocated);
        };
        match self.gd.get(gt) {
            None | Some(0) => return Ok(Gte::Unallocated),
            Some(_) => {}
        }
        if !self.cache.contains(gt) {
            self.load_gt(gt)?;
        }
        let raw = self.cache.get(gt).map_or(0, |t| t[idx]);
        Ok(Gte::from_raw(raw, self.header.zeroed_gte()))
    }

    /// Load grain table `gt` (whose GD entry is non-zero) into the cache, together with
    /// the following tables when they lie back to back in the file.
    pub(crate) fn load_gt(&mut self, gt: usize) -> Result<()> {
        if self.cache.victim().is_some_and(|v| v.dirty) {
            self.flush_tables()?;
        }
        let first = u64::from(self.gd[gt]);
        let offset = first * SECTOR;
        let fits = |n: u64| offset + n * GT_BYTES <= self.file_len;
        if !fits(1) {
            let (path, file_len) = (self.file.path().to_path_buf(), self.file_len);
            return Err(Error::Truncated {
                path,
                what: "grain table",
                offset,
                file_len,
            });
        }
        let max = READ_AHEAD_TABLES.min(self.cache.free_slots()).max(1);
        let mut n = 1usize;
        while n < max {
            let next = gt + n;
            let want = first + GT_SECTORS * u64::try_from(n).unwrap_or(u64::MAX);
            let contiguous = self.gd.get(next).is_some_and(|&s| u64::from(s) == want);
            if !contiguous
                || self.cache.contains(next)
                || !fits(u64::try_from(n + 1).unwrap_or(u64::MAX))
            {
                break;
            }
            n += 1;
        }
        let mut raw = vec![0u8; n * GTES * 4];
        self.file.read_exact_at(&mut raw, offset, "grain table")?;
        for (i, table) in raw.chunks_exact(GTES * 4).enumerate() {
            let entries: Box<[u32]> = table.chunks_exact(4).map(|c| le_u32(c, 0)).collect();
            self.cache.insert(gt + i, entries);
        }
        Ok(())
    }

    /// Set the raw entry of `grain` in its (allocated) grain table, marking it dirty.
    pub(crate) fn set_gte(&mut self, grain: u64, raw: u32) -> Result<()> {
        let (gt, idx) = split_grain(grain);
        let gt = usize::try_from(gt)
            .map_err(|_| Error::corrupt(self.file.path(), "grain index overflow"))?;
        if !self.cache.contains(gt) {
            self.load_gt(gt)?;
        }
        let slot = self
            .cache
            .get_mut(gt)
            .ok_or_else(|| Error::corrupt(self.file.path(), "grain table not cached"))?;
        slot.entries[idx] = raw;
        slot.dirty = true;
        Ok(())
    }
}
