//! seSparse extents (ESXi 6.5 and later: VMFS6 snapshot redo logs), read-only.
//!
//! VMware documents no seSparse format. This reader follows the layout public readers
//! agree on (qemu's `block/vmdk.c`, from black-box research of ESXi's hostd log; also
//! xen-orchestra's), and checks as strictly as they do: unknown versions, grain sizes,
//! flags or a journal left to replay are refused, never guessed at.
//!
//! All fields are little-endian u64; offsets and sizes count 512-byte sectors.
//!
//! Constant header (sector 0):
//!
//! | off | field | valid |
//! |---|---|---|
//! | 0 | magic | `0xcafebabe` |
//! | 8 | version | `0x0000000200000001` (2.1) |
//! | 16 | capacity | sectors of the extent |
//! | 24 | grainSize | 8 (4 KiB) |
//! | 32 | grainTableSize | 64 (4096 entries: 16 MiB per table) |
//! | 40 | flags | 0 |
//! | 48..80 | reserved 1-4 | 0 |
//! | 80, 88 | volatile header offset, size | |
//! | 96..128 | journal header, journal (offset, size) | unused here |
//! | 128, 136 | grain directory offset, size | |
//! | 144, 152 | grain tables offset, size | |
//! | 160..192 | free bitmap, back map (offset, size) | unused here |
//! | 192, 200 | grains offset, size | |
//!
//! Volatile header: magic `0xcafecafe`, freeGTNumber, nextTxnSeqNumber, replayJournal
//! (non-zero: the file is dirty and its journal would have to be replayed: refused).
//!
//! A grain directory entry is 0 (no table) or `0x1000_0000 << 32 | index`: the table is
//! at `grainTables + index × grainTableSize`. A grain table entry's top nibble says: 0
//! unallocated (the rest must be 0), 1 unmapped and 2 zero (both read as zeros), 3
//! allocated, with grain index `((e >> 48) & 0xfff) | ((e & 0xffff_ffff_ffff) << 12)`
//! at `grains + index × grainSize`.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::PathFile;
use crate::magic::SECTOR;

const CONST_MAGIC: u64 = 0xcafe_babe;
const VOLATILE_MAGIC: u64 = 0xcafe_cafe;
const VERSION_2_1: u64 = 0x0000_0002_0000_0001;
const GRAIN_SECTORS: u64 = 8;
const TABLE_SECTORS: u64 = 64;
/// Entries per grain table.
const GTES: u64 = TABLE_SECTORS * SECTOR / 8;
const GRAIN_BYTES: u64 = GRAIN_SECTORS * SECTOR;
/// Bytes one grain table covers.
const TABLE_SPAN: u64 = GTES * GRAIN_BYTES;

/// An open seSparse extent.
pub struct SeSparseExtent {
    file: PathFile,
    len_bytes: u64,
    gd: Vec<u64>,
    tables_sector: u64,
    grains_sector: u64,
    /// The last table read: (GD index, entries).
    table: Option<(usize, Vec<u64>)>,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl SeSparseExtent {
    /// Opens the seSparse file `file` as an extent of `len_bytes` (the descriptor's).
    ///
    /// # Errors
    /// [`Error::BadHeader`] for what is refused (magic, version, grain size, flags, a
    /// journal to replay), [`Error::Truncated`] for structures past EOF,
    /// [`Error::ReadOnly`] when opened for writing.
    pub fn from_file(file: PathFile, len_bytes: u64) -> Result<Self> {
        let path = file.path().to_path_buf();
        if file.writable() {
            return Err(Error::ReadOnly {
                path,
                reason: "seSparse extents are read-only here",
            });
        }
        let bad = |field: &'static str, value: u64, reason: &'static str| Error::BadHeader {
            path: path.clone(),
            field,
            value,
            reason,
        };
        let mut h = [0u8; 512];
        file.read_exact_at(&mut h, 0, "seSparse const header")?;
        let checks: [(&'static str, u64, u64, &'static str); 6] = [
            ("magic", u64_at(&h, 0), CONST_MAGIC, "not an seSparse file"),
            (
                "version",
                u64_at(&h, 8),
                VERSION_2_1,
                "only seSparse 2.1 is read",
            ),
            (
                "grainSize",
                u64_at(&h, 24),
                GRAIN_SECTORS,
                "only 4 KiB grains are read",
            ),
            (
                "grainTableSize",
                u64_at(&h, 32),
                TABLE_SECTORS,
                "only 64-sector tables are read",
            ),
            ("flags", u64_at(&h, 40), 0, "unknown flags"),
            (
                "reserved",
                (48..80)
                    .step_by(8)
                    .map(|o| u64_at(&h, o))
                    .fold(0, |a, v| a | v),
                0,
                "reserved fields are not 0",
            ),
        ];
        for (field, value, want, reason) in checks {
            if value != want {
                return Err(bad(field, value, reason));
            }
        }
        let capacity = u64_at(&h, 16)
            .checked_mul(SECTOR)
            .ok_or_else(|| bad("capacity", u64_at(&h, 16), "overflows"))?;
        if len_bytes > capacity {
            return Err(Error::corrupt(&path, format!("the descriptor gives the extent {len_bytes} bytes but the seSparse header holds only {capacity}")));
        }
        let mut v = [0u8; 512];
        let volatile = u64_at(&h, 80).saturating_mul(SECTOR);
        file.read_exact_at(&mut v, volatile, "seSparse volatile header")?;
        if u64_at(&v, 0) != VOLATILE_MAGIC {
            return Err(bad(
                "volatileMagic",
                u64_at(&v, 0),
                "not an seSparse volatile header",
            ));
        }
        if u64_at(&v, 24) != 0 {
            return Err(bad(
                "replayJournal",
                u64_at(&v, 24),
                "the file is dirty: its journal would have to be replayed (open it in ESXi first)",
            ));
        }
        // Only the entries that cover the extent's own length are read.
        let entries = len_bytes
            .div_ceil(TABLE_SPAN)
            .max(1)
            .min(u64_at(&h, 136).saturating_mul(SECTOR / 8));
        let gd_offset = u64_at(&h, 128).saturating_mul(SECTOR);
        let gd_bytes = entries.saturating_mul(8);
        if gd_offset.saturating_add(gd_bytes) > file.len()? {
            return Err(Error::Truncated {
                path,
                what: "seSparse grain directory",
                offset: gd_offset,
                file_len: file.len()?,
            });
        }
        let mut raw =
            vec![
                0u8;
                usize::try_from(gd_bytes).map_err(|_| bad("grainDirSize", entries, "too large"))?
            ];
        file.read_exact_at(&mut raw, gd_offset, "seSparse grain directory")?;
        let gd = raw.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
        Ok(SeSparseExtent {
            tables_sector: u64_at(&h, 144),
            grains_sector: u64_at(&h, 192),
            file,
            len_bytes,
            gd,
            table: None,
        })
    }

    /// The grain table entry for `grain`, 0 when no table covers it.
    fn gte(&mut self, grain: u64) -> Result<u64> {
        let gt = usize::try_from(grain / GTES).unwrap_or(usize::MAX);
        let idx = usize::try_from(grain % GTES).unwrap_or(0);
        let Some(&entry) = self.gd.get(gt) else {
            return Ok(0);
        };
        if entry == 0 {
            return Ok(0);
        }
        if entry >> 32 != 0x1000_0000 {
            return Err(Error::corrupt(
                self.file.path(),
                format!("grain directory entry {gt} is {entry:#x}"),
            ));
        }
        if self.table.as_ref().is_none_or(|(n, _)| *n != gt) {
            let sector = (entry & 0xffff_ffff)
                .checked_mul(TABLE_SECTORS)
                .and_then(|s| s.checked_add(self.tables_sector))
                .ok_or_else(|| {
                    Error::corrupt(self.file.path(), format!("grain table {gt} lies past 2^64"))
                })?;
            let mut raw = vec![0u8; usize::try_from(TABLE_SECTORS * SECTOR).unwrap_or(0)];
            self.file.read_exact_at(
                &mut raw,
                sector.saturating_mul(SECTOR),
                "seSparse grain table",
            )?;
            self.table = Some((gt, raw.chunks_exact(8).map(|c| u64_at(c, 0)).collect()));
        }
        Ok(self
            .table
            .as_ref()
            .and_then(|(_, t)| t.get(idx).copied())
            .unwrap_or(0))
    }

    /// The state of `grain` and, when allocated, its byte offset in the file.
    fn locate(&mut self, grain: u64) -> Result<(BlockState, u64)> {
        let e = self.gte(grain)?;
        match e >> 60 {
            0 if e == 0 => Ok((BlockState::Unallocated, 0)),
            1 | 2 => Ok((BlockState::Zero, 0)),
            3 => {
                let index = ((e >> 48) & 0xfff) | ((e & 0xffff_ffff_ffff) << 12);
                let sector = index
                    .checked_mul(GRAIN_SECTORS)
                    .and_then(|s| s.checked_add(self.grains_sector))
                    .filter(|s| s.checked_mul(SECTOR).is_some())
                    .ok_or_else(|| {
                        Error::corrupt(
                            self.file.path(),
                            format!("grain {grain}: entry {e:#x} lies past 2^64"),
                        )
                    })?;
                Ok((BlockState::Data, sector * SECTOR))
            }
            _ => Err(Error::corrupt(
                self.file.path(),
                format!("grain {grain}: grain table entry {e:#x}"),
            )),
        }
    }
}

impl Extent for SeSparseExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        let grain = offset / GRAIN_BYTES;
        let (state, _) = self.locate(grain)?;
        let mut len = (GRAIN_BYTES - offset % GRAIN_BYTES).min(max_len);
        while len < max_len {
            let next = (offset + len) / GRAIN_BYTES;
            if self.locate(next)?.0 != state {
                break;
            }
            len = (len + GRAIN_BYTES).min(max_len);
        }
        Ok((state, len))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_grain = pos % GRAIN_BYTES;
            let n = usize::try_from(GRAIN_BYTES - in_grain)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            match self.locate(pos / GRAIN_BYTES)? {
                (BlockState::Data, at) => self
                    .file
                    .read_at_zero_fill(&mut buf[done..done + n], at + in_grain)?,
                _ => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8], _backing: &mut dyn Backing) -> Result<()> {
        Err(Error::ReadOnly {
            path: self.file.path().to_path_buf(),
            reason: "seSparse extents are read-only here",
        })
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.file.path().to_path_buf()]
    }

    fn allocated_file_bytes(&self) -> u64 {
        self.file.allocated_bytes()
    }
}
