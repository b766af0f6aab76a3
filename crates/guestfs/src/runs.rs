//! Maps from file offsets to volume offsets, shared by the readers, and the bounded cache
//! of them that keeps ranged reads of a big file from walking its metadata every time.

use crate::device::Device;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A piece of a file: `len` bytes at file offset `logical`, stored at volume byte `physical`
/// (`None`: reads as zeros — a hole or an unwritten extent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Offset in the file.
    pub logical: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes are on the volume.
    pub physical: Option<u64>,
}

/// Most runs one file may have (bounds memory on hostile metadata).
pub const MAX_RUNS: usize = 4 << 20;

/// Read `buf` from a file of `size` bytes laid out as `runs` (sorted by `logical`).
pub fn read_runs(
    dev: &dyn Device,
    runs: &[Run],
    size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize> {
    if offset >= size {
        return Ok(0);
    }
    let want = (buf.len() as u64).min(size - offset) as usize;
    let buf = &mut buf[..want];
    buf.fill(0);
    let first = runs.partition_point(|r| r.logical + r.len <= offset);
    for r in &runs[first..] {
        if r.logical >= offset + want as u64 {
            break;
        }
        let Some(phys) = r.physical else { continue };
        let start = r.logical.max(offset);
        let end = (r.logical + r.len).min(offset + want as u64);
        let dst = &mut buf[(start - offset) as usize..(end - offset) as usize];
        dev.read_at(phys + (start - r.logical), dst)?;
    }
    Ok(want)
}

/// Read `buf` at `offset` of a file whose bytes are all in memory (inline data); returns
/// the bytes copied (0 at or past the end).
pub fn read_bytes(data: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let n = (data.len() - start).min(buf.len());
    buf[..n].copy_from_slice(&data[start..start + n]);
    n
}

/// Sort, check for overlap, and merge neighbouring runs.
pub fn normalize(what: &str, mut runs: Vec<Run>) -> Result<Vec<Run>> {
    runs.sort_by_key(|r| r.logical);
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for r in runs.into_iter().filter(|r| r.len > 0) {
        if let Some(last) = out.last_mut() {
            if r.logical < last.logical + last.len {
                return Err(Error::corrupt(
                    what,
                    format!("extents overlap at file byte {}", r.logical),
                ));
            }
            let adjacent = r.logical == last.logical + last.len;
            let contiguous = match (last.physical, r.physical) {
                (Some(a), Some(b)) => a + last.len == b,
                (None, None) => true,
                _ => false,
            };
            if adjacent && contiguous {
                last.len += r.len;
                continue;
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The data ranges (runs with bytes) of a file of `size` bytes.
pub fn data_ranges(runs: &[Run], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in runs
        .iter()
        .filter(|r| r.physical.is_some() && r.logical < size)
    {
        let end = (r.logical + r.len).min(size);
        match out.last_mut() {
            Some(last) if last.0 + last.1 == r.logical => last.1 = end - last.0,
            _ => out.push((r.logical, end - r.logical)),
        }
    }
    out
}

/// A bounded cache of the run lists of recently read files.
#[derive(Default)]
pub struct RunCache(Mutex<HashMap<u64, Arc<Vec<Run>>>>);

impl RunCache {
    /// The runs of `ino`, computed by `make` when not cached.
    pub fn get(&self, ino: u64, make: impl FnOnce() -> Result<Vec<Run>>) -> Result<Arc<Vec<Run>>> {
        if let Some(r) = self.lock().get(&ino) {
            return Ok(Arc::clone(r));
        }
        let runs = Arc::new(make()?);
        let mut map = self.lock();
        if map.len() >= 256 {
            map.clear();
        }
        map.insert(ino, Arc::clone(&runs));
        Ok(runs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<Run>>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_extents_are_refused_and_neighbours_merge() {
        let r = |logical, len, physical| Run {
            logical,
            len,
            physical,
        };
        let merged =
            normalize("f", vec![r(4096, 4096, Some(8192)), r(0, 4096, Some(4096))]).unwrap();
        assert_eq!(merged, vec![r(0, 8192, Some(4096))]);
        let e =
            normalize("f", vec![r(0, 8192, Some(0)), r(4096, 4096, Some(1 << 20))]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let dev = crate::MemDevice(vec![7; 16]);
        let mut buf = [1u8; 8];
        // A run pointing past the volume is a read error, not a panic.
        assert!(read_runs(&dev, &[r(0, 8, Some(12))], 8, 0, &mut buf).is_err());
    }
}
