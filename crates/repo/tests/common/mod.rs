//! Shared by the repository's integration tests: a disk in memory.
#![allow(dead_code)]

use vmdk::{BlockState, DiskSource, Run};

pub const MIB: usize = 1 << 20;

/// A disk in memory with an explicit allocation map.
pub struct MemDisk {
    pub data: Vec<u8>,
    /// (offset, len, state), covering the disk.
    pub map: Vec<(u64, u64, BlockState)>,
}

impl MemDisk {
    /// `mib` MiB: the first half data (pseudo-random per `seed`), then a zero run, then
    /// unallocated.
    pub fn new(mib: usize, seed: u8) -> MemDisk {
        let mut data = vec![0u8; mib * MIB];
        let half = mib / 2 * MIB;
        let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in &mut data[..half] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let cap = data.len() as u64;
        let h = half as u64;
        MemDisk {
            data,
            map: vec![
                (0, h, BlockState::Data),
                (h, (cap - h) / 2, BlockState::Zero),
                (
                    h + (cap - h) / 2,
                    cap - h - (cap - h) / 2,
                    BlockState::Unallocated,
                ),
            ],
        }
    }
}

impl DiskSource for MemDisk {
    fn capacity(&self) -> u64 {
        self.data.len() as u64
    }
    fn map(&mut self, offset: u64, max_len: u64) -> vmdk::Result<Run> {
        for &(o, l, s) in &self.map {
            if offset >= o && offset < o + l {
                return Ok(Run {
                    offset,
                    len: (o + l - offset).min(max_len),
                    state: s,
                });
            }
        }
        Ok(Run {
            offset,
            len: 0,
            state: BlockState::Unallocated,
        })
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> vmdk::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
}
