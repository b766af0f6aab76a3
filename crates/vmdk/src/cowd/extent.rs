//! [`CowdExtent`]: open, and the [`Extent`] operations (map, read, write, flush, close).

use super::tables::GtSlot;
use super::write::Pending;
use super::{
    len64, small, CowdHeader, GD_ENTRIES_PER_SECTOR, GT_CACHE_SLOTS, OFF_FREE_SECTOR,
    OFF_UNCLEAN_SHUTDOWN,
};
use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::PathFile;
use crate::magic::{COWD_HEADER_BYTES, SECTOR};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A COWD extent opened for reading or writing. See the module documentation.
pub struct CowdExtent {
    pub(super) file: PathFile,
    pub(super) header: CowdHeader,
    pub(super) writable: bool,
    pub(super) len_bytes: u64,
    pub(super) gran_sectors: u64,
    pub(super) grain_bytes: u64,
    /// First sector after header and GD: no grain or GT may start below it.
    pub(super) meta_end_sector: u64,
    pub(super) gd: Vec<u32>,
    /// GTs known to be all zeros on disk and not cached (fresh preallocated tables).
    pub(super) zero_gts: Vec<bool>,
    /// A byte range `[start, end)` of the file known to be a hole (from `SEEK_DATA`);
    /// forgotten whenever this handle writes.
    pub(super) hole: (u64, u64),
    /// Indices of GD sectors (relative to gdOffset) changed since the last flush.
    pub(super) gd_dirty: BTreeSet<u64>,
    pub(super) cache: HashMap<u64, GtSlot>,
    pub(super) cache_slots: usize,
    pub(super) tick: u64,
    pub(super) next_free_sector: u64,
    pub(super) file_len_bytes: u64,
    pub(super) pending: Pending,
    pub(super) data_dirty: bool,
    /// Space was allocated since the last flush (freeSector must be rewritten).
    pub(super) allocated: bool,
    pub(super) unclean_set_here: bool,
}

impl CowdExtent {
    /// Open the COWD file `path` as an extent of `len_bytes` (the descriptor's sector count ×
    /// 512), read-only or for writing. Reads the header and the GD; GTs are read on demand.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`Error::Truncated`] if the header or GD
    /// lies past EOF; [`Error::BadHeader`] as for [`CowdHeader::parse`]; [`Error::Corrupt`]
    /// if `len_bytes` exceeds the header's capacity.
    pub fn open(path: &Path, len_bytes: u64, writable: bool) -> Result<Self> {
        CowdExtent::from_file(PathFile::open(path, writable)?, len_bytes)
    }

    /// The extent over the open `file` (writable when the file was opened so).
    ///
    /// # Errors
    /// As for [`CowdExtent::open`].
    pub fn from_file(file: PathFile, len_bytes: u64) -> Result<Self> {
        let writable = file.writable();
        let path = &file.path().to_path_buf();
        let file_len_bytes = file.len()?;
        let mut raw = vec![0u8; small(COWD_HEADER_BYTES)];
        file.read_exact_at(&mut raw, 0, "COWD header")?;
        let header = CowdHeader::parse(&raw, path)?;
        if len_bytes > header.capacity_bytes() {
            return Err(Error::corrupt(
                path,
                format!(
                    "the descriptor gives the extent {len_bytes} bytes but the COWD header holds only {}",
                    header.capacity_bytes()
                ),
            ));
        }
        let gran_sectors = u64::from(header.granularity_sectors);
        let gd_offset_bytes = u64::from(header.gd_offset_sectors) * SECTOR;
        let gd_bytes = u64::from(header.num_gd_entries) * 4;
        if gd_offset_bytes.saturating_add(gd_bytes) > file_len_bytes {
            // Checked before allocating: the header is untrusted.
            return Err(Error::Truncated {
                path: path.clone(),
                what: "COWD grain directory",
                offset: gd_offset_bytes,
                file_len: file_len_bytes,
            });
        }
        let mut gd_raw = vec![0u8; small(gd_bytes)];
        file.read_exact_at(&mut gd_raw, gd_offset_bytes, "COWD grain directory")?;
        let gd: Vec<u32> = gd_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let gd_len = gd.len();
        let meta_end_sector = header.gd_end_sector();
        // qemu appends at EOF and leaves freeSector stale: never allocate below either.
        let next_free_sector = u64::from(header.free_sector)
            .max(file_len_bytes.div_ceil(SECTOR))
            .max(meta_end_sector);
        Ok(CowdExtent {
            writable,
            len_bytes,
            gran_sectors,
            grain_bytes: gran_sectors * SECTOR,
            meta_end_sector,
            zero_gts: vec![false; gd_len],
            hole: (0, 0),
            gd,
            gd_dirty: BTreeSet::new(),
            cache: HashMap::new(),
            cache_slots: GT_CACHE_SLOTS,
            tick: 0,
            next_free_sector,
            file_len_bytes,
            pending: Pending::default(),
            data_dirty: false,
            allocated: false,
            unclean_set_here: false,
            header,
            file,
        })
    }

    /// The header as read at open (freeSector and uncleanShutdown track later updates).
    pub fn header(&self) -> &CowdHeader {
        &self.header
    }

    pub(super) fn path(&self) -> &Path {
        self.file.path()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len_bytes => Ok(()),
            _ => Err(Error::OutOfRange {
                path: self.path().to_path_buf(),
                offset,
                len,
                capacity: self.len_bytes,
            }),
        }
    }

    /// A grain or GT entry must start after the GD and, for grains, end within the file.
    pub(super) fn check_grain(&self, gt: u64, index: u64, entry: u32) -> Result<()> {
        let sector = u64::from(entry);
        if sector < self.meta_end_sector {
            return Err(Error::corrupt(
                self.path(),
                format!("GT {gt} entry {index} points into the header or grain directory (sector {sector:#x})"),
            ));
        }
        if (sector + self.gran_sectors) * SECTOR > self.file_len_bytes {
            return Err(Error::GrainPastEof {
                path: self.path().to_path_buf(),
                gt,
                index,
                sector,
            });
        }
        Ok(())
    }
}

impl Extent for CowdExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        self.check_range(offset, max_len)?;
        if max_len == 0 {
            return Ok((BlockState::Unallocated, 0));
        }
        let end = offset + max_len;
        let first = offset / self.grain_bytes;
        let (entry, grains) = self.scan(first, end.div_ceil(self.grain_bytes), false)?;
        let run_end = ((first + grains) * self.grain_bytes).min(end);
        let state = if entry == 0 {
            BlockState::Unallocated
        } else {
            BlockState::Data
        };
        Ok((state, run_end - offset))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, len64(buf.len()))?;
        let end = offset + len64(buf.len());
        let mut done = 0usize;
        while done < buf.len() {
            let cur = offset + len64(done);
            let grain = cur / self.grain_bytes;
            let (entry, grains) = self.scan(grain, end.div_ceil(self.grain_bytes), true)?;
            let run_end = ((grain + grains) * self.grain_bytes).min(end);
            let chunk = &mut buf[done..small(run_end - offset)];
            if entry == 0 {
                chunk.fill(0);
            } else {
                let at = u64::from(entry) * SECTOR + cur % self.grain_bytes;
                self.file.read_exact_at(chunk, at, "COWD grain")?;
            }
            done += chunk.len();
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8], backing: &mut dyn Backing) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
                reason: "COWD extent opened read-only",
            });
        }
        self.check_range(offset, len64(data.len()))?;
        if data.is_empty() {
            return Ok(());
        }
        self.mark_unclean()?;
        let mut new_entries = Vec::new();
        let written = self
            .write_grains(offset, data, backing, &mut new_entries)
            .and_then(|()| self.write_pending());
        if let Err(e) = written {
            // New grains stay unreferenced (leaked space, never garbage in the GTs).
            self.pending.buf.clear();
            return Err(e);
        }
        for (gd_index, index, entry) in new_entries {
            self.cache_gt_for_write(gd_index)?;
            if let Some(slot) = self.cache.get_mut(&gd_index) {
                if let Some(e) = slot.entries.get_mut(small(index)) {
                    *e = entry;
                    slot.dirty = true;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.write_pending()?;
        let gts_dirty = self.cache.values().any(|s| s.dirty);
        // Only a handle that allocated rewrites freeSector: an unmodified file stays untouched.
        let free_changed =
            self.allocated && self.next_free_sector != u64::from(self.header.free_sector);
        if !self.data_dirty && !gts_dirty && self.gd_dirty.is_empty() && !free_changed {
            return Ok(());
        }
        // Data first: a GT entry must never reach the disk before the grain it points to.
        self.file.sync_data()?;
        self.hole = (0, 0);
        for (gd_index, slot) in self.cache.iter_mut().filter(|(_, s)| s.dirty) {
            let sector = u64::from(self.gd.get(small(*gd_index)).copied().unwrap_or(0));
            let raw: Vec<u8> = slot.entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.file.write_all_at(&raw, sector * SECTOR)?;
            slot.dirty = false;
        }
        let gd_offset_bytes = u64::from(self.header.gd_offset_sectors) * SECTOR;
        for gd_sector in std::mem::take(&mut self.gd_dirty) {
            let first = small(gd_sector * GD_ENTRIES_PER_SECTOR);
            let last = (first + small(GD_ENTRIES_PER_SECTOR)).min(self.gd.len());
            let raw: Vec<u8> = self.gd[first..last]
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect();
            self.file
                .write_all_at(&raw, gd_offset_bytes + gd_sector * SECTOR)?;
        }
        if free_changed {
            let free = u32::try_from(self.next_free_sector)
                .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
            self.file
                .write_all_at(&free.to_le_bytes(), OFF_FREE_SECTOR)?;
            self.header.free_sector = free;
        }
        self.file.sync_all()?;
        self.data_dirty = false;
        self.allocated = false;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        if self.unclean_set_here {
            self.file
                .write_all_at(&0u32.to_le_bytes(), OFF_UNCLEAN_SHUTDOWN)?;
            self.file.sync_all()?;
            self.header.unclean_shutdown = 0;
            self.unclean_set_here = false;
        }
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path().to_path_buf()]
    }

    fn allocated_file_bytes(&self) -> u64 {
        self.file.allocated_bytes()
    }
}

impl Drop for CowdExtent {
    /// Best effort: keep what was written if the owner forgot `close()`. uncleanShutdown stays
    /// set, so `check` reports the missing close. Errors cannot be reported from here.
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
    }
}
