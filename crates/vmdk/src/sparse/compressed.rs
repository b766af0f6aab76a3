//! Reading compressed grains (streamOptimized): marker, zlib stream, last-grain cache.
//!
//! Compressed grains lie back to back in LBA order in every stream file seen in the wild,
//! so the compressed bytes are read through a 1 MiB window: a sequential read of a stream
//! file costs one pread per MiB of compressed data, not one per grain.

use super::lookup::split_grain;
use super::{le_u32, len64, SparseHeader};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::SECTOR;
use flate2::{Decompress, FlushDecompress, Status};

/// Size of the read-ahead window over compressed data.
const WINDOW_BYTES: u64 = 1 << 20;
/// Bytes of a grain marker before the compressed data: u64 lba, u32 size.
pub(crate) const GRAIN_MARKER_BYTES: u64 = 12;

/// A read-ahead window over the file.
struct Window {
    buf: Vec<u8>,
    start: u64,
}

impl Window {
    /// `len` bytes at `offset`, refilling the window when they are not all inside it.
    fn get(&mut self, file: &PathFile, file_len: u64, offset: u64, len: u64) -> Result<&[u8]> {
        let inside = offset >= self.start
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= self.start.saturating_add(len64(self.buf.len())));
        if !inside {
            let avail = file_len.saturating_sub(offset);
            if avail < len {
                let path = file.path().to_path_buf();
                return Err(Error::Truncated {
                    path,
                    what: "compressed grain",
                    offset,
                    file_len,
                });
            }
            let want = len.max(WINDOW_BYTES).min(avail);
            let want = usize::try_from(want)
                .map_err(|_| Error::corrupt(file.path(), "compressed grain too large"))?;
            self.buf.resize(want, 0);
            self.start = offset;
            file.read_exact_at(&mut self.buf, offset, "compressed grain")?;
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let to = usize::try_from(len)
            .ok()
            .and_then(|l| from.checked_add(l))
            .unwrap_or(usize::MAX);
        self.buf
            .get(from..to)
            .ok_or_else(|| Error::corrupt(file.path(), "compressed grain window"))
    }
}

/// Decompression state of one compressed extent.
pub(crate) struct Inflater {
    has_markers: bool,
    grain_bytes: u64,
    window: Window,
    inflate: Decompress,
    /// The last decompressed grain (zero-filled past its decompressed length).
    grain: Vec<u8>,
    cached: Option<u64>,
}

impl Inflater {
    pub(crate) fn new(h: &SparseHeader) -> Self {
        Inflater {
            has_markers: h.has_markers(),
            grain_bytes: h.grain_bytes(),
            window: Window {
                buf: Vec::new(),
                start: 0,
            },
            inflate: Decompress::new(true),
            grain: Vec::new(),
            cached: None,
        }
    }

    /// The decompressed contents of `grain`, whose GTE is `sector`. Always one grain long.
    pub(crate) fn grain(
        &mut self,
        file: &PathFile,
        file_len: u64,
        grain: u64,
        sector: u64,
    ) -> Result<&[u8]> {
        if self.cached == Some(grain) {
            return Ok(&self.grain);
        }
        self.cached = None;
        let (gt, index) = split_grain(grain);
        let index = u64::try_from(index).unwrap_or(0);
        let offset = sector.saturating_mul(SECTOR);
        if offset >= file_len {
            return Err(Error::GrainPastEof {
                path: file.path().to_path_buf(),
                gt,
                index,
                sector,
            });
        }
        let limit = self.grain_bytes * 2;
        let (data_offset, data_len) = if self.has_markers {
            let marker = self
                .window
                .get(file, file_len, offset, GRAIN_MARKER_BYTES)?;
            let size = u64::from(le_u32(marker, 8));
            let lba = super::le_u64(marker, 0);
            let want = grain.saturating_mul(self.grain_bytes / crate::magic::SECTOR);
            if lba != want {
                let reason = format!(
                    "GT {gt} entry {index}: the grain marker at sector {sector:#x} is for LBA {lba:#x}, the grain table says LBA {want:#x}"
                );
                return Err(Error::corrupt(file.path(), reason));
            }
            if size == 0 || size > limit {
                let reason = format!(
                    "GT {gt} entry {index}: grain marker at sector {sector:#x} has size {size}"
                );
                return Err(Error::corrupt(file.path(), reason));
            }
            (offset + GRAIN_MARKER_BYTES, size)
        } else {
            (offset, limit.min(file_len - offset))
        };
        let input = self.window.get(file, file_len, data_offset, data_len)?;
        let grain_len = usize::try_from(self.grain_bytes).unwrap_or(0);
        self.grain.resize(grain_len, 0);
        self.inflate.reset(true);
        let status = self
            .inflate
            .decompress(input, &mut self.grain, FlushDecompress::Finish);
        let out = usize::try_from(self.inflate.total_out()).unwrap_or(usize::MAX);
        let problem = match status {
            Ok(Status::StreamEnd) => None,
            Ok(_) if out >= grain_len => Some("decompresses to more than one grain".to_string()),
            Ok(_) => Some("zlib stream ends early".to_string()),
            Err(e) => Some(format!("zlib error: {e}")),
        };
        if let Some(p) = problem {
            let reason =
                format!("GT {gt} entry {index}: compressed grain at sector {sector:#x}: {p}");
            return Err(Error::corrupt(file.path(), reason));
        }
        // The last grain of a disk may be partial: what was not stored reads as zero.
        if let Some(rest) = self.grain.get_mut(out..) {
            rest.fill(0);
        }
        self.cached = Some(grain);
        Ok(&self.grain)
    }
}
