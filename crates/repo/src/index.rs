//! Disk indexes: a disk as a list of fixed-size chunks aligned to its offsets.
//!
//! Entry `i` covers bytes `[i × chunk_size, (i + 1) × chunk_size)` (the last one ends at
//! the capacity) and says what the source disk held there: nothing (unallocated: a hole
//! in a thin disk, left a hole on restore), zeros (allocated but zero: not stored), or
//! data (the chunk's id). Byte layout (little-endian), inside an envelope of kind 2:
//!
//! ```text
//! 0   8  magic "vcbindex"
//! 8   4  version (1)
//! 12  4  chunk size in bytes (a power of two, 64 KiB … 16 MiB)
//! 16  8  capacity in bytes
//! 24  8  number of entries n = ceil(capacity / chunk size)
//! 32  …  n entries: 1 byte state (0 unallocated, 1 zero, 2 data), data entries followed
//!        by the 32-byte chunk id
//! ```

use crate::crypto::Id;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"vcbindex";
const VERSION: u32 = 1;

/// Smallest and largest chunk sizes a repository may use.
pub const MIN_CHUNK: u32 = 64 << 10;
/// See [`MIN_CHUNK`].
pub const MAX_CHUNK: u32 = 16 << 20;

/// What one chunk-sized piece of a disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Nothing allocated (reads as zeros, restored as a hole).
    Unallocated,
    /// Allocated zeros (not stored).
    Zero,
    /// Data, stored as the chunk with this id.
    Data(Id),
}

/// A disk's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIndex {
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Disk capacity in bytes.
    pub capacity: u64,
    /// One entry per chunk.
    pub entries: Vec<Entry>,
}

impl DiskIndex {
    /// An index of `capacity` bytes, every entry unallocated.
    pub fn new(capacity: u64, chunk_size: u32) -> DiskIndex {
        let n = capacity.div_ceil(u64::from(chunk_size));
        DiskIndex {
            chunk_size,
            capacity,
            entries: vec![Entry::Unallocated; usize::try_from(n).unwrap_or(0)],
        }
    }

    /// The byte range of entry `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(self.capacity);
        (start, end)
    }

    /// The distinct chunk ids, in entry order.
    pub fn chunk_ids(&self) -> impl Iterator<Item = Id> + '_ {
        self.entries.iter().filter_map(|e| match e {
            Entry::Data(id) => Some(*id),
            _ => None,
        })
    }

    /// Encode (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let data = self.chunk_ids().count();
        let mut out = Vec::with_capacity(32 + self.entries.len() + data * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            match e {
                Entry::Unallocated => out.push(0),
                Entry::Zero => out.push(1),
                Entry::Data(id) => {
                    out.push(2);
                    out.extend_from_slice(&id.0);
                }
            }
        }
        out
    }

    /// Decode an index stored as `name`, checking every field.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `name`.
    pub fn decode(name: &str, b: &[u8]) -> Result<DiskIndex> {
        let bad = |why: String| Error::corrupt(name, why);
        if b.len() < 32 || &b[..8] != MAGIC {
            return Err(bad("not a disk index".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!("index version {version} is not supported")));
        }
        let chunk_size = u32_at(12);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(bad(format!("chunk size {chunk_size} out of range")));
        }
        let capacity = u64_at(16);
        let n = u64_at(24);
        if n != capacity.div_ceil(u64::from(chunk_size)) {
            return Err(bad(format!(
                "{n} entries for a capacity of {capacity} bytes"
            )));
        }
        // Every entry takes at least one byte: a count beyond the bytes left is a lie,
        // refused before anything is allocated for it.
        if n > (b.len() - 32) as u64 {
            return Err(bad("truncated".into()));
        }
        let mut entries = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let mut pos = 32;
        for _ in 0..n {
            let state = *b.get(pos).ok_or_else(|| bad("truncated".into()))?;
            pos += 1;
            entries.push(match state {
                0 => Entry::Unallocated,
                1 => Entry::Zero,
                2 => {
                    let raw = b
                        .get(pos..pos + 32)
                        .ok_or_else(|| bad("truncated".into()))?;
                    pos += 32;
                    let mut id = [0u8; 32];
                    id.copy_from_slice(raw);
                    Entry::Data(Id(id))
                }
                s => return Err(bad(format!("unknown entry state {s}"))),
            });
        }
        if pos != b.len() {
            return Err(bad("trailing bytes".into()));
        }
        Ok(DiskIndex {
            chunk_size,
            capacity,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_and_refuse_damage() {
        let mut ix = DiskIndex::new(10 * 65536 + 512, MIN_CHUNK);
        assert_eq!(ix.entries.len(), 11);
        ix.entries[1] = Entry::Zero;
        ix.entries[3] = Entry::Data(Id([3; 32]));
        ix.entries[10] = Entry::Data(Id([9; 32]));
        assert_eq!(ix.range(10), (10 * 65536, 10 * 65536 + 512));
        let b = ix.encode();
        assert_eq!(DiskIndex::decode("i", &b).unwrap(), ix);
        for cut in [0, 31, 33, b.len() - 1] {
            assert!(DiskIndex::decode("i", &b[..cut]).is_err(), "cut {cut}");
        }
        let mut lying = b.clone();
        lying[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(DiskIndex::decode("i", &lying).is_err());
        let mut odd = b.clone();
        odd[12..16].copy_from_slice(&65537u32.to_le_bytes());
        assert!(DiskIndex::decode("i", &odd).is_err());
        let mut state = b;
        state[32] = 7;
        assert!(DiskIndex::decode("i", &state).is_err());
    }
}
