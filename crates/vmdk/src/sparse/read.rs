//! `map` (long runs of one state) and `read_at` (coalesced preads).

use super::lookup::{split_grain, GTES};
use super::{len64, Gte, SparseExtent};
use crate::error::{Error, Result};
use crate::extent::BlockState;
use crate::magic::SECTOR;

impl SparseExtent {
    /// [`crate::Extent::map`]: the state at `offset` and how far it extends (up to
    /// `max_len`), merging grains of equal state across grain table boundaries. Whole
    /// tables with a zero GD entry are skipped at once.
    pub(crate) fn map_run(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        let end = offset.saturating_add(max_len);
        if max_len == 0 {
            return Ok((BlockState::Unallocated, 0));
        }
        let cap = self.capacity_bytes;
        if offset >= cap {
            // Between the header capacity and the descriptor's size: nothing stored, reads zero.
            return Ok((BlockState::Zero, max_len));
        }
        let gb = self.grain_bytes;
        let first = self.gte(offset / gb)?.state();
        let zeroed = self.header.zeroed_gte();
        let limit = end.min(cap);
        let mut grain = offset / gb + 1;
        let mut differs = false;
        while !differs && grain.saturating_mul(gb) < limit {
            let (gt, idx) = split_grain(grain);
            let gt = usize::try_from(gt).unwrap_or(usize::MAX);
            let table_end = (grain - len64(idx)).saturating_add(len64(GTES));
            if matches!(self.gd.get(gt), None | Some(0)) {
                if first != BlockState::Unallocated {
                    break;
                }
                grain = table_end;
                continue;
            }
            if !self.cache.contains(gt) {
                self.load_gt(gt)?;
            }
            let Some(table) = self.cache.get(gt) else {
                break;
            };
            for &raw in &table[idx..] {
                if grain.saturating_mul(gb) >= limit {
                    break;
                }
                if Gte::from_raw(raw, zeroed).state() != first {
                    differs = true;
                    break;
                }
                grain += 1;
            }
        }
        let mut run_end = grain.saturating_mul(gb).min(end);
        if !differs && run_end >= cap && first == BlockState::Zero {
            run_end = end;
        }
        Ok((first, run_end - offset))
    }

    /// [`crate::Extent::read_at`]: physically contiguous allocated grains are read with a
    /// single pread; compressed grains go through the decompression cache.
    pub(crate) fn read_bytes(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let gb = self.grain_bytes;
        let cap = self.capacity_bytes;
        let gs = self.header.grain_sectors;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(len64(done));
            let rest = len64(buf.len() - done);
            if pos >= cap {
                buf[done..].fill(0);
                break;
            }
            let grain = pos / gb;
            let in_grain = pos % gb;
            let first_len = (gb - in_grain).min(rest).min(cap - pos);
            let mut len = first_len;
            match self.gte(grain)? {
                Gte::Unallocated | Gte::Zero => fill_zero(buf, done, len),
                Gte::Data(sector) if self.compressed.is_some() => {
                    let (file, file_len) = (&self.file, self.file_len);
                    let Some(inflater) = self.compressed.as_mut() else {
                        break;
                    };
                    let data = inflater.grain(file, file_len, grain, sector)?;
                    let from = usize::try_from(in_grain).unwrap_or(0);
                    let n = usize::try_from(len).unwrap_or(0);
                    buf[done..done + n].copy_from_slice(&data[from..from + n]);
                }
                Gte::Data(sector) => {
                    let start = self.grain_offset(grain, sector)?;
                    let mut next_grain = grain + 1;
                    let mut next_sector = sector + gs;
                    while len < rest && next_grain.saturating_mul(gb) < cap {
                        match self.gte(next_grain)? {
                            Gte::Data(s) if s == next_sector && s * SECTOR < self.file_len => {}
                            _ => break,
                        }
                        len += gb.min(rest - len).min(cap - next_grain * gb);
                        next_grain += 1;
                        next_sector += gs;
                    }
                    let n = usize::try_from(len).unwrap_or(usize::MAX);
                    self.file
                        .read_at_zero_fill(&mut buf[done..done + n], start + in_grain)?;
                    #[cfg(test)]
                    {
                        self.io_calls.0 += 1;
                    }
                }
            }
            done += usize::try_from(len).unwrap_or(usize::MAX);
        }
        Ok(())
    }

    /// Byte offset of an allocated grain's data, refusing grains that start past EOF.
    pub(crate) fn grain_offset(&self, grain: u64, sector: u64) -> Result<u64> {
        match sector.checked_mul(SECTOR) {
            Some(off) if off < self.file_len => Ok(off),
            _ => {
                let (gt, index) = split_grain(grain);
                let path = self.file.path().to_path_buf();
                Err(Error::GrainPastEof {
                    path,
                    gt,
                    index: len64(index),
                    sector,
                })
            }
        }
    }
}

fn fill_zero(buf: &mut [u8], from: usize, len: u64) {
    let n = usize::try_from(len).unwrap_or(usize::MAX);
    buf[from..from + n].fill(0);
}
