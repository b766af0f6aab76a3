//! Space allocation and grain writes of a [`CowdExtent`] (see "Allocation" in the module docs).

use super::extent::CowdExtent;
use super::tables::GtState;
use super::{
    len64, small, GD_ENTRIES_PER_SECTOR, GT_BYTES, GT_SECTORS, MAX_FILE_SECTORS, MAX_PENDING_BYTES,
    OFF_UNCLEAN_SHUTDOWN,
};
use crate::error::{Error, Result};
use crate::extent::Backing;
use crate::magic::{COWD_GTES_PER_GT, SECTOR};

/// Grain data gathered for one pwrite.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) offset_bytes: u64,
    pub(super) buf: Vec<u8>,
}

impl CowdExtent {
    /// Reserve `sectors` at the next free sector, aligned to `align` sectors.
    fn allocate(&mut self, sectors: u64, align: u64) -> Result<u64> {
        let start = self.next_free_sector.next_multiple_of(align);
        let end = start + sectors;
        if end > MAX_FILE_SECTORS {
            return Err(Error::unsupported(
                self.path(),
                "COWD extent full: its sector numbers are 32-bit",
            ));
        }
        self.next_free_sector = end;
        self.allocated = true;
        Ok(start)
    }

    /// Give GD entry `gd_index` a new zeroed GT, cached.
    pub(super) fn allocate_gt(&mut self, gd_index: u64) -> Result<()> {
        let sector = self.allocate(GT_SECTORS, 1)?;
        self.hole = (0, 0);
        self.file
            .write_all_at(&vec![0u8; small(GT_BYTES)], sector * SECTOR)?;
        self.file_len_bytes = self.file_len_bytes.max((sector + GT_SECTORS) * SECTOR);
        let Some(slot) = self.gd.get_mut(small(gd_index)) else {
            return Err(Error::corrupt(
                self.path(),
                format!("GD entry {gd_index} out of range"),
            ));
        };
        *slot = u32::try_from(sector)
            .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
        self.gd_dirty.insert(gd_index / GD_ENTRIES_PER_SECTOR);
        self.tick += 1;
        // The table on disk is already zero, so the cached copy starts clean.
        self.insert_gt(gd_index, vec![0; small(COWD_GTES_PER_GT)], false)
    }

    /// Queue grain data for writing at `offset_bytes`, merging with contiguous earlier data.
    fn queue(&mut self, offset_bytes: u64, data: &[u8]) -> Result<()> {
        let p = &mut self.pending;
        if !p.buf.is_empty()
            && p.offset_bytes + len64(p.buf.len()) == offset_bytes
            && p.buf.len() + data.len() <= MAX_PENDING_BYTES
        {
            p.buf.extend_from_slice(data);
            return Ok(());
        }
        self.write_pending()?;
        self.pending.offset_bytes = offset_bytes;
        self.pending.buf.extend_from_slice(data);
        Ok(())
    }

    pub(super) fn write_pending(&mut self) -> Result<()> {
        if self.pending.buf.is_empty() {
            return Ok(());
        }
        self.hole = (0, 0);
        let result = self
            .file
            .write_all_at(&self.pending.buf, self.pending.offset_bytes);
        let end = self.pending.offset_bytes + len64(self.pending.buf.len());
        self.pending.buf.clear();
        result?;
        self.file_len_bytes = self.file_len_bytes.max(end);
        self.data_dirty = true;
        Ok(())
    }

    pub(super) fn mark_unclean(&mut self) -> Result<()> {
        if self.header.unclean_shutdown != 0 {
            return Ok(());
        }
        self.file
            .write_all_at(&1u32.to_le_bytes(), OFF_UNCLEAN_SHUTDOWN)?;
        self.file.sync_data()?;
        self.header.unclean_shutdown = 1;
        self.unclean_set_here = true;
        Ok(())
    }

    /// Write the grains of one `write_at`, collecting new GT entries in `new_entries`
    /// (applied only once their data is written).
    pub(super) fn write_grains(
        &mut self,
        offset: u64,
        data: &[u8],
        backing: &mut dyn Backing,
        new_entries: &mut Vec<(u64, u64, u32)>,
    ) -> Result<()> {
        let gb = self.grain_bytes;
        let mut done = 0usize;
        while done < data.len() {
            let cur = offset + len64(done);
            let grain = cur / gb;
            let in_grain = cur % gb;
            let n = small((gb - in_grain).min(len64(data.len() - done)));
            let chunk = &data[done..done + n];
            let (gd_index, index) = (grain / COWD_GTES_PER_GT, grain % COWD_GTES_PER_GT);
            let e = match self.load_gt(gd_index)? {
                GtState::Cached => self.entry(gd_index, index),
                GtState::Zero => 0,
                GtState::Absent => {
                    self.allocate_gt(gd_index)?;
                    0
                }
            };
            if e != 0 {
                self.check_grain(gd_index, index, e)?;
                self.queue(u64::from(e) * SECTOR + in_grain, chunk)?;
            } else {
                let sector = self.allocate(self.gran_sectors, self.gran_sectors)?;
                if len64(n) == gb {
                    self.queue(sector * SECTOR, chunk)?;
                } else {
                    let grain_start = grain * gb;
                    let valid = small(gb.min(self.len_bytes - grain_start));
                    let (head, after) = (small(in_grain), small(in_grain) + n);
                    let mut whole = vec![0u8; small(gb)];
                    if head > 0 {
                        backing.read_backing(grain_start, &mut whole[..head])?;
                    }
                    whole[head..after].copy_from_slice(chunk);
                    if after < valid {
                        backing
                            .read_backing(grain_start + len64(after), &mut whole[after..valid])?;
                    }
                    self.queue(sector * SECTOR, &whole)?;
                }
                let entry = u32::try_from(sector)
                    .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
                new_entries.push((gd_index, index, entry));
            }
            done += n;
        }
        Ok(())
    }

    /// Limit the GT cache (tests exercise eviction with a tiny cache).
    #[cfg(test)]
    pub(super) fn set_cache_slots(&mut self, slots: usize) {
        self.cache_slots = slots.max(1);
    }
}
