//! Writing: grain allocation with copy-on-write, in-place rewrites, ordered flush, close.

use super::lookup::{split_grain, GTES};
use super::{len64, Gte, SparseExtent, GT_BYTES, GT_SECTORS};
use crate::error::{Error, Result};
use crate::extent::Backing;
use crate::magic::SECTOR;

/// Byte offset of `uncleanShutdown` in the header.
const UNCLEAN_SHUTDOWN_OFFSET: u64 = 72;
/// Grain data written between two starts of asynchronous writeback.
const WRITEBACK_KICK_BYTES: u64 = 8 << 20;

/// Largest copy-on-write buffer kept between writes.
const SCRATCH_KEEP_BYTES: usize = 16 << 20;

impl SparseExtent {
    fn check_writable(&self) -> Result<()> {
        let reason = if !self.writable {
            "opened read-only"
        } else if self.compressed.is_some() {
            "streamOptimized disks are write-once"
        } else if self.header.version >= 3 {
            "version 3 hosted sparse extents (changed block tracking) are read-only"
        } else {
            return Ok(());
        };
        Err(Error::ReadOnly {
            path: self.file.path().to_path_buf(),
            reason,
        })
    }

    /// Set uncleanShutdown on disk (fsynced) before the first change.
    fn mark_unclean(&mut self) -> Result<()> {
        if !self.marked_unclean {
            // Only the flag byte changes: bytes this implementation does not know survive.
            self.file.write_all_at(&[1], UNCLEAN_SHUTDOWN_OFFSET)?;
            self.file.sync_all()?;
            self.header.unclean_shutdown = true;
            self.marked_unclean = true;
        }
        Ok(())
    }

    /// [`crate::Extent::write_at`].
    pub(crate) fn write_bytes(
        &mut self,
        offset: u64,
        data: &[u8],
        backing: &mut dyn Backing,
    ) -> Result<()> {
        self.check_writable()?;
        if data.is_empty() {
            return Ok(());
        }
        let end = match offset.checked_add(len64(data.len())) {
            Some(end) if end <= self.capacity_bytes => end,
            _ => {
                let path = self.file.path().to_path_buf();
                let (len, capacity) = (len64(data.len()), self.capacity_bytes);
                return Err(Error::OutOfRange {
                    path,
                    offset,
                    len,
                    capacity,
                });
            }
        };
        self.mark_unclean()?;
        self.closed = false;
        let gb = self.grain_bytes;
        let last = (end - 1) / gb;
        let mut grain = offset / gb;
        while grain <= last {
            let (first, n) = self.write_run(grain, last)?;
            let run_start = (grain * gb).max(offset);
            let run_end = ((grain + n) * gb).min(end);
            let slice = &data[idx(run_start - offset)..idx(run_end - offset)];
            match first {
                Gte::Data(sector) => self.rewrite_in_place(grain, sector, run_start, slice)?,
                _ => self.write_new_grains(grain, n, run_start, slice, backing)?,
            }
            grain += n;
        }
        self.unsynced = true;
        Ok(())
    }

    /// The entry of `grain` and how many grains from it (up to `last`) one pwrite can
    /// cover: allocated grains lying back to back in the file, or grains to allocate.
    fn write_run(&mut self, grain: u64, last: u64) -> Result<(Gte, u64)> {
        let gs = self.header.grain_sectors;
        let first = self.gte(grain)?;
        let mut n = 1u64;
        while grain + n <= last {
            let same_run = match (first, self.gte(grain + n)?) {
                (Gte::Data(s0), Gte::Data(s)) => s == s0 + n * gs,
                (Gte::Data(_), _) | (_, Gte::Data(_)) => false,
                _ => true,
            };
            if !same_run {
                break;
            }
            n += 1;
        }
        Ok((first, n))
    }

    /// Overwrite allocated grains (starting with `grain` at `sector`) in place.
    fn rewrite_in_place(&mut self, grain: u64, sector: u64, at: u64, data: &[u8]) -> Result<()> {
        if sector < self.header.overhead_sectors {
            // A GTE into the metadata (qemu would read it): never write there.
            let (gt, index) = split_grain(grain);
            let reason = format!(
                "GT {gt} entry {index} points into the metadata (sector {sector:#x}); run check"
            );
            return Err(Error::corrupt(self.file.path(), reason));
        }
        let base = self.grain_offset(grain, sector)?;
        self.file
            .write_all_at(data, base + (at - grain * self.grain_bytes))?;
        self.wrote(len64(data.len()));
        Ok(())
    }

    /// Allocate `n` grains from `grain` at EOF and write them in one pwrite: `data` at
    /// `at` (bytes), the uncovered head and tail from `backing` (unallocated grains) or
    /// zeros (zeroed grains, and whatever lies past the capacity).
    fn write_new_grains(
        &mut self,
        grain: u64,
        n: u64,
        at: u64,
        data: &[u8],
        backing: &mut dyn Backing,
    ) -> Result<()> {
        let gb = self.grain_bytes;
        let gs = self.header.grain_sectors;
        let (first_gt, _) = split_grain(grain);
        let (last_gt, _) = split_grain(grain + n - 1);
        for gt in first_gt..=last_gt {
            self.ensure_gt_allocated(gt)?;
        }
        let head_state = self.gte(grain)?;
        let tail_state = self.gte(grain + n - 1)?;
        let sector = self.file_len.div_ceil(gb) * gs;
        let last_sector = sector + (n - 1) * gs;
        if u32::try_from(last_sector).is_err() {
            let reason = "extent file full: grain table entries address at most 2 TiB".to_string();
            return Err(Error::unsupported(self.file.path(), reason));
        }
        let file_off = sector * SECTOR;
        let run_start = grain * gb;
        let run_bytes = n * gb;
        let data_end = at + len64(data.len());
        if at == run_start && data_end == run_start + run_bytes {
            self.file.write_all_at(data, file_off)?;
        } else {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.resize(idx(run_bytes), 0);
            let head = idx(at - run_start);
            let tail = idx(data_end - run_start);
            let filled = self
                .fill_gap(&mut buf[..head], run_start, head_state, backing)
                .and_then(|()| {
                    buf[head..tail].copy_from_slice(data);
                    self.fill_gap(&mut buf[tail..], data_end, tail_state, backing)
                });
            let written = filled.and_then(|()| self.file.write_all_at(&buf, file_off));
            // Keep the buffer for the next partial write unless a huge write inflated it.
            if buf.capacity() <= SCRATCH_KEEP_BYTES {
                self.scratch = buf;
            }
            written?;
        }
        self.wrote(run_bytes);
        self.file_len = self.file_len.max(file_off + run_bytes);
        for i in 0..n {
            let raw = u32::try_from(sector + i * gs).unwrap_or(0);
            self.set_gte(grain + i, raw)?;
        }
        Ok(())
    }

    /// Account for `bytes` of grain data written; every [`WRITEBACK_KICK_BYTES`] start
    /// asynchronous writeback of the file's dirty pages. A bulk copy then keeps the disk
    /// busy while it reads, and the fdatasync of the next flush finds little left to do
    /// (without this, closing a freshly written 1 GiB extent waits seconds for writeback).
    fn wrote(&mut self, bytes: u64) {
        #[cfg(test)]
        {
            self.io_calls.1 += 1;
        }
        self.unkicked_bytes += bytes;
        if self.unkicked_bytes >= WRITEBACK_KICK_BYTES {
            self.unkicked_bytes = 0;
            self.file.start_writeback();
        }
    }

    /// Fill the part of a new grain that the write does not cover.
    fn fill_gap(
        &self,
        buf: &mut [u8],
        at: u64,
        state: Gte,
        backing: &mut dyn Backing,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let limit = self.capacity_bytes.min(self.len_bytes);
        let from_below = if state == Gte::Unallocated {
            limit.saturating_sub(at).min(len64(buf.len()))
        } else {
            0
        };
        let split = idx(from_below);
        if split > 0 {
            backing.read_backing(at, &mut buf[..split])?;
        }
        buf[split..].fill(0);
        Ok(())
    }

    /// Give grain table `gt` a place in the file if its GD entry is 0 (files from writers
    /// that do not preallocate): zeroed GT (and redundant GT) at EOF, made durable, then
    /// the GD (and RGD) entry.
    fn ensure_gt_allocated(&mut self, gt: u64) -> Result<()> {
        let gti = usize::try_from(gt)
            .map_err(|_| Error::corrupt(self.file.path(), "grain table index overflow"))?;
        if self.gd.get(gti) != Some(&0) {
            return Ok(());
        }
        let tables = if self.rgd.is_some() { 2 } else { 1 };
        let sector = self.file_len.div_ceil(SECTOR);
        // The redundant table (if any) follows the primary one; both must be addressable.
        let (Ok(raw), Ok(rraw), Ok(_)) = (
            u32::try_from(sector),
            u32::try_from(sector + GT_SECTORS),
            u32::try_from(sector + GT_SECTORS * tables),
        ) else {
            let reason = "extent file full: no room for a new grain table".to_string();
            return Err(Error::unsupported(self.file.path(), reason));
        };
        let zeros = vec![0u8; idx(GT_BYTES * tables)];
        self.file.write_all_at(&zeros, sector * SECTOR)?;
        self.file_len = self.file_len.max((sector + GT_SECTORS * tables) * SECTOR);
        self.file.sync_data()?;
        let entry = gt * 4;
        self.file
            .write_all_at(&raw.to_le_bytes(), self.gd_offset_bytes + entry)?;
        self.gd[gti] = raw;
        if let Some(rgd) = self.rgd.as_mut() {
            self.file
                .write_all_at(&rraw.to_le_bytes(), self.rgd_offset_bytes + entry)?;
            rgd[gti] = rraw;
        }
        Ok(())
    }

    /// [`crate::Extent::flush`]: fdatasync grain data, write the primary GTs, fdatasync,
    /// write the redundant GTs, fsync.
    pub(crate) fn flush_tables(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let dirty = self.cache.dirty_tables();
        if dirty.is_empty() && !self.unsynced {
            return Ok(());
        }
        self.file.sync_data()?;
        self.write_tables(&dirty, false)?;
        if self.rgd.is_some() && !dirty.is_empty() {
            self.file.sync_data()?;
            self.write_tables(&dirty, true)?;
        }
        self.file.sync_all()?;
        self.cache.mark_all_clean();
        self.unsynced = false;
        Ok(())
    }

    /// Write the cached tables `gts` (ascending) to their primary or redundant places,
    /// tables lying back to back in the file going out in one pwrite.
    fn write_tables(&mut self, gts: &[usize], redundant: bool) -> Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut run_next = 0u64;
        for &gt in gts {
            let dir = if redundant {
                self.rgd.as_deref()
            } else {
                Some(&self.gd[..])
            };
            let Some(&sector) = dir.and_then(|d| d.get(gt)) else {
                continue;
            };
            if sector == 0 {
                continue;
            }
            let sector = u64::from(sector);
            if !buf.is_empty() && sector != run_next {
                self.file.write_all_at(&buf, run_start * SECTOR)?;
                buf.clear();
            }
            if buf.is_empty() {
                run_start = sector;
            }
            run_next = sector + GT_SECTORS;
            let entries = self.cache.get(gt).unwrap_or(&[]);
            debug_assert_eq!(entries.len(), GTES);
            buf.extend(entries.iter().flat_map(|e| e.to_le_bytes()));
        }
        if !buf.is_empty() {
            self.file.write_all_at(&buf, run_start * SECTOR)?;
        }
        Ok(())
    }

    /// [`crate::Extent::close`]: flush, then clear uncleanShutdown (header last, fsync) if
    /// this handle set it and it was not already set at open.
    pub(crate) fn close_extent(&mut self) -> Result<()> {
        if self.closed || !self.writable {
            self.closed = true;
            return Ok(());
        }
        self.flush_tables()?;
        if self.marked_unclean && !self.unclean_at_open {
            self.header.unclean_shutdown = false;
            self.file.write_all_at(&[0], UNCLEAN_SHUTDOWN_OFFSET)?;
            self.file.sync_all()?;
            self.marked_unclean = false;
        }
        self.closed = true;
        Ok(())
    }
}

/// A byte count known to fit memory (it indexes an existing buffer) as usize.
fn idx(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
