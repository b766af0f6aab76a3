//! Grain tables of a [`CowdExtent`]: lookup, the GT cache, and runs of grains in one state.

use super::extent::CowdExtent;
use super::{next_data_offset, small, GT_BYTES};
use crate::error::{Error, Result};
use crate::extent::Extent;
use crate::fileio;
use crate::magic::{COWD_GTES_PER_GT, SECTOR};

/// What [`CowdExtent::load_gt`] found for a GD entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GtState {
    /// GD entry 0: no table.
    Absent,
    /// A table known to hold only zeros (not cached: nothing to look up).
    Zero,
    /// The table is in the cache.
    Cached,
}

/// One cached grain table.
pub(super) struct GtSlot {
    pub(super) entries: Vec<u32>,
    pub(super) dirty: bool,
    pub(super) last_use: u64,
}

impl CowdExtent {
    /// Look up GT `gd_index`, reading it into the cache unless it is absent or all zeros.
    pub(super) fn load_gt(&mut self, gd_index: u64) -> Result<GtState> {
        self.tick += 1;
        if let Some(slot) = self.cache.get_mut(&gd_index) {
            slot.last_use = self.tick;
            return Ok(GtState::Cached);
        }
        if self.zero_gts.get(small(gd_index)).copied().unwrap_or(false) {
            return Ok(GtState::Zero);
        }
        let sector = u64::from(self.gd.get(small(gd_index)).copied().unwrap_or(0));
        if sector == 0 {
            return Ok(GtState::Absent);
        }
        if sector < self.meta_end_sector {
            return Err(Error::corrupt(
                self.path(),
                format!("GD entry {gd_index} points into the header or grain directory (sector {sector:#x})"),
            ));
        }
        let offset = sector * SECTOR;
        let end = offset + GT_BYTES;
        if !(self.hole.0 <= offset && end <= self.hole.1) {
            // One SEEK_DATA skips a whole stretch of untouched preallocated tables.
            self.hole = (offset, next_data_offset(&self.file, offset));
        }
        let in_hole = end <= self.hole.1 && end <= self.file_len_bytes;
        let mut raw = vec![0u8; small(GT_BYTES)];
        if !in_hole {
            self.file
                .read_exact_at(&mut raw, offset, "COWD grain table")?;
        }
        if in_hole || fileio::is_zero(&raw) {
            // Most preallocated tables of a delta stay empty: remember, do not cache.
            if let Some(z) = self.zero_gts.get_mut(small(gd_index)) {
                *z = true;
            }
            return Ok(GtState::Zero);
        }
        let entries = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        self.insert_gt(gd_index, entries, false)?;
        Ok(GtState::Cached)
    }

    /// Make sure GT `gd_index` is cached, so that entries can be set; a GD entry of 0 gets a
    /// new table (ESX's lazy allocation, for files made elsewhere).
    pub(super) fn cache_gt_for_write(&mut self, gd_index: u64) -> Result<()> {
        match self.load_gt(gd_index)? {
            GtState::Cached => Ok(()),
            GtState::Absent => self.allocate_gt(gd_index),
            GtState::Zero => {
                if let Some(z) = self.zero_gts.get_mut(small(gd_index)) {
                    *z = false;
                }
                self.insert_gt(gd_index, vec![0; small(COWD_GTES_PER_GT)], false)
            }
        }
    }

    pub(super) fn insert_gt(
        &mut self,
        gd_index: u64,
        entries: Vec<u32>,
        dirty: bool,
    ) -> Result<()> {
        while self.cache.len() >= self.cache_slots {
            let victim = self
                .cache
                .iter()
                .filter(|(_, s)| !s.dirty)
                .min_by_key(|(_, s)| s.last_use)
                .map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    self.cache.remove(&k);
                }
                // Every cached GT is dirty: write them (after the data) so they can go.
                None => self.flush()?,
            }
        }
        self.cache.insert(
            gd_index,
            GtSlot {
                entries,
                dirty,
                last_use: self.tick,
            },
        );
        Ok(())
    }

    /// Entry `index` of GT `gd_index`, which must be cached.
    pub(super) fn entry(&self, gd_index: u64, index: u64) -> u32 {
        self.cache
            .get(&gd_index)
            .and_then(|s| s.entries.get(small(index)).copied())
            .unwrap_or(0)
    }

    /// The run of grains starting at `first` (before `limit`) sharing the first grain's state.
    /// Returns the first grain's GT entry (0 = unallocated) and the run length in grains (≥ 1).
    /// With `physical`, data grains must also be contiguous in the file.
    pub(super) fn scan(&mut self, first: u64, limit: u64, physical: bool) -> Result<(u32, u64)> {
        let mut g = first;
        let mut first_entry: Option<u32> = None;
        'tables: while g < limit {
            let gd_index = g / COWD_GTES_PER_GT;
            let start = g % COWD_GTES_PER_GT;
            let count = (COWD_GTES_PER_GT - start).min(limit - g);
            if self.load_gt(gd_index)? != GtState::Cached {
                match first_entry {
                    None => first_entry = Some(0),
                    Some(0) => {}
                    Some(_) => break,
                }
                g += count;
                continue;
            }
            let Some(slot) = self.cache.get(&gd_index) else {
                break;
            };
            for index in start..start + count {
                let e = slot.entries.get(small(index)).copied().unwrap_or(0);
                let same = match first_entry {
                    None => true,
                    Some(0) => e == 0,
                    Some(f) => {
                        e != 0
                            && (!physical
                                || u64::from(e) == u64::from(f) + (g - first) * self.gran_sectors)
                    }
                };
                if !same {
                    break 'tables;
                }
                if e != 0 {
                    self.check_grain(gd_index, index, e)?;
                }
                first_entry.get_or_insert(e);
                g += 1;
            }
        }
        Ok((first_entry.unwrap_or(0), g - first))
    }
}
