//! A bounded, least-recently-used cache of grain tables.
//!
//! A 2 TiB extent with 64 KiB grains has 65 536 grain tables (128 MiB); the cache keeps at
//! most [`DEFAULT_MAX_TABLES`] of them (16 MiB). Lookup is two array indexings: `slot_of`
//! maps a grain-directory index to a slot. Dirty tables (changed by writes, not yet written
//! back) are never dropped silently: the owner flushes before evicting one.

use crate::magic::KDMV_GTES_PER_GT;

/// Memory budget for cached grain tables.
const CACHE_BYTES: usize = 16 << 20;
/// Tables held at most: 16 MiB / 2 KiB.
pub(crate) const DEFAULT_MAX_TABLES: usize = CACHE_BYTES / (KDMV_GTES_PER_GT as usize * 4);
/// Marker in `slot_of` for "not cached".
const NOT_CACHED: u32 = u32::MAX;

/// One cached grain table.
pub(crate) struct Slot {
    /// Grain-directory index of the table.
    pub(crate) gt: usize,
    /// The 512 entries, host order.
    pub(crate) entries: Box<[u32]>,
    /// Changed in memory and not yet written back.
    pub(crate) dirty: bool,
    used: u64,
}

/// The cache. See the module documentation.
pub(crate) struct GtCache {
    slot_of: Vec<u32>,
    slots: Vec<Slot>,
    max_tables: usize,
    tick: u64,
}

impl GtCache {
    /// A cache for a grain directory of `gd_len` entries holding at most `max_tables`.
    pub(crate) fn new(gd_len: usize, max_tables: usize) -> Self {
        GtCache {
            slot_of: vec![NOT_CACHED; gd_len],
            slots: Vec::new(),
            max_tables: max_tables.max(1),
            tick: 0,
        }
    }

    fn slot_index(&self, gt: usize) -> Option<usize> {
        match self.slot_of.get(gt) {
            Some(&s) if s != NOT_CACHED => usize::try_from(s).ok(),
            _ => None,
        }
    }

    /// Whether table `gt` is cached.
    pub(crate) fn contains(&self, gt: usize) -> bool {
        self.slot_index(gt).is_some()
    }

    /// The entries of table `gt`, marking it recently used.
    pub(crate) fn get(&mut self, gt: usize) -> Option<&[u32]> {
        let i = self.slot_index(gt)?;
        self.tick += 1;
        let slot = &mut self.slots[i];
        slot.used = self.tick;
        Some(&slot.entries)
    }

    /// Mutable access to table `gt` (for writes; the caller sets `dirty`).
    pub(crate) fn get_mut(&mut self, gt: usize) -> Option<&mut Slot> {
        let i = self.slot_index(gt)?;
        self.tick += 1;
        let slot = &mut self.slots[i];
        slot.used = self.tick;
        Some(slot)
    }

    /// Free slots left before an insertion must evict.
    pub(crate) fn free_slots(&self) -> usize {
        self.max_tables.saturating_sub(self.slots.len())
    }

    /// The least recently used table, if the cache is full (what `insert` would evict).
    pub(crate) fn victim(&self) -> Option<&Slot> {
        if self.slots.len() < self.max_tables {
            return None;
        }
        self.slots.iter().min_by_key(|s| s.used)
    }

    /// Insert a clean table, evicting the least recently used one when full. The caller
    /// must have written back the victim if it was dirty (see [`GtCache::victim`]).
    pub(crate) fn insert(&mut self, gt: usize, entries: Box<[u32]>) {
        if gt >= self.slot_of.len() || self.contains(gt) {
            return;
        }
        self.tick += 1;
        let new = Slot {
            gt,
            entries,
            dirty: false,
            used: self.tick,
        };
        let idx = if self.slots.len() < self.max_tables {
            self.slots.push(new);
            self.slots.len() - 1
        } else {
            let Some((i, _)) = self.slots.iter().enumerate().min_by_key(|(_, s)| s.used) else {
                return;
            };
            let old = self.slots[i].gt;
            self.slot_of[old] = NOT_CACHED;
            self.slots[i] = new;
            i
        };
        // Slot indexes are below max_tables, which fits u32 for any sane budget.
        self.slot_of[gt] = u32::try_from(idx).unwrap_or(NOT_CACHED);
    }

    /// Grain-directory indexes of the dirty tables, ascending.
    pub(crate) fn dirty_tables(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .slots
            .iter()
            .filter(|s| s.dirty)
            .map(|s| s.gt)
            .collect();
        v.sort_unstable();
        v
    }

    /// Mark every table clean (after they were all written back).
    pub(crate) fn mark_all_clean(&mut self) {
        for s in &mut self.slots {
            s.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: u32) -> Box<[u32]> {
        vec![v; 512].into_boxed_slice()
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = GtCache::new(10, 2);
        c.insert(0, table(0));
        c.insert(1, table(1));
        assert!(c.get(0).is_some());
        assert_eq!(c.victim().map(|s| s.gt), Some(1));
        c.insert(2, table(2));
        assert!(c.contains(0) && !c.contains(1) && c.contains(2));
        assert_eq!(c.get(2).map(|t| t[5]), Some(2));
        if let Some(s) = c.get_mut(0) {
            s.dirty = true;
        }
        assert_eq!(c.dirty_tables(), vec![0]);
        c.mark_all_clean();
        assert!(c.dirty_tables().is_empty());
        assert_eq!(DEFAULT_MAX_TABLES, 8192);
    }
}
