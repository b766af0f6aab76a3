//! The 2048-byte header: [`CowdHeader`] field by field, as in the module's byte table.

use super::{
    gd_entries_needed, granularity_ok, len64, COWD_FLAG_ROOT, GD_ENTRIES_PER_SECTOR, HEADER_SECTORS,
};
use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::magic::{COWD_MAGIC, COWD_VERSION, SECTOR};
use std::path::Path;

/// Root or child variant of the header's union at byte 32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CowdLink {
    /// `flags & COWD_FLAG_ROOT`: legacy CHS geometry (what ESX and vcb write for vmfsSparse).
    Root {
        /// Cylinders.
        cylinders: u32,
        /// Heads.
        heads: u32,
        /// Sectors per track.
        sectors: u32,
    },
    /// Legacy child redo log naming its parent in the header.
    Child {
        /// Parent file name, NUL-terminated, NUL-padded.
        parent_file_name: Box<[u8; 1024]>,
        /// Parent generation.
        parent_generation: u32,
    },
}

/// The 2048-byte COWD header, field by field (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowdHeader {
    /// Format version (1).
    pub version: u32,
    /// Flags ([`COWD_FLAG_ROOT`], [`COWD_FLAG_CHECK_CAPABLE`](super::COWD_FLAG_CHECK_CAPABLE),
    /// 0x4 inconsistent).
    pub flags: u32,
    /// Capacity in sectors (`numSectors`).
    pub num_sectors: u32,
    /// Grain size in sectors (`granularity`).
    pub granularity_sectors: u32,
    /// Sector of the grain directory (`gdOffset`).
    pub gd_offset_sectors: u32,
    /// Number of GD entries (`numGDEntries`).
    pub num_gd_entries: u32,
    /// Next free sector (`freeSector`).
    pub free_sector: u32,
    /// Root geometry or child parent name.
    pub link: CowdLink,
    /// `generation`.
    pub generation: u32,
    /// `name`, NUL-padded.
    pub name: [u8; 60],
    /// `description`, NUL-padded.
    pub description: [u8; 512],
    /// `savedGeneration`.
    pub saved_generation: u32,
    /// `reserved`.
    pub reserved: [u8; 8],
    /// `uncleanShutdown`: non-zero while a writer has the file open.
    pub unclean_shutdown: u32,
}

fn le32(b: &[u8; 2048], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put32(b: &mut [u8; 2048], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn array<const N: usize>(b: &[u8; 2048], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

impl CowdHeader {
    /// Parse and validate a header from the first 2048 bytes of `buf`; `path` names the file
    /// in errors. Checks only what the header alone can tell (file-length checks happen in
    /// [`CowdExtent::open`](super::CowdExtent::open)).
    ///
    /// # Errors
    /// [`Error::Truncated`] if `buf` is shorter than 2048 bytes; [`Error::BadHeader`] for a
    /// wrong magic or version, a granularity that is not a power of two in 1..=2048, a
    /// numGDEntries that does not match numSectors, a gdOffset inside the header, or a
    /// freeSector inside the header or GD.
    pub fn parse(buf: &[u8], path: &Path) -> Result<Self> {
        let b: &[u8; 2048] = buf
            .get(..2048)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Truncated {
                path: path.to_path_buf(),
                what: "COWD header",
                offset: 0,
                file_len: len64(buf.len()),
            })?;
        let bad = |field: &'static str, value: u64, reason: &'static str| Error::BadHeader {
            path: path.to_path_buf(),
            field,
            value,
            reason,
        };
        if b[0..4] != COWD_MAGIC {
            let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            return Err(bad("magic", u64::from(magic), "not \"COWD\""));
        }
        let flags = le32(b, 8);
        let link = if flags & COWD_FLAG_ROOT != 0 {
            CowdLink::Root {
                cylinders: le32(b, 32),
                heads: le32(b, 36),
                sectors: le32(b, 40),
            }
        } else {
            CowdLink::Child {
                parent_file_name: Box::new(array::<1024>(b, 32)),
                parent_generation: le32(b, 1056),
            }
        };
        let header = CowdHeader {
            version: le32(b, 4),
            flags,
            num_sectors: le32(b, 12),
            granularity_sectors: le32(b, 16),
            gd_offset_sectors: le32(b, 20),
            num_gd_entries: le32(b, 24),
            free_sector: le32(b, 28),
            link,
            generation: le32(b, 1060),
            name: array::<60>(b, 1064),
            description: array::<512>(b, 1124),
            saved_generation: le32(b, 1636),
            reserved: array::<8>(b, 1640),
            unclean_shutdown: le32(b, 1648),
        };
        if header.version != COWD_VERSION {
            return Err(bad(
                "version",
                u64::from(header.version),
                "only version 1 exists",
            ));
        }
        let gran = u64::from(header.granularity_sectors);
        if !granularity_ok(gran) {
            return Err(bad(
                "granularity",
                gran,
                "must be a power of two from 1 to 2048 sectors",
            ));
        }
        let needed = gd_entries_needed(u64::from(header.num_sectors), gran);
        let found = u64::from(header.num_gd_entries);
        if found != needed && found != needed.next_multiple_of(GD_ENTRIES_PER_SECTOR) {
            return Err(bad(
                "numGDEntries",
                found,
                "does not match ceil(numSectors / (4096 x granularity))",
            ));
        }
        if u64::from(header.gd_offset_sectors) < HEADER_SECTORS {
            return Err(bad(
                "gdOffset",
                u64::from(header.gd_offset_sectors),
                "grain directory overlaps the header",
            ));
        }
        if u64::from(header.free_sector) < header.gd_end_sector() {
            return Err(bad(
                "freeSector",
                u64::from(header.free_sector),
                "points into the header or grain directory",
            ));
        }
        Ok(header)
    }

    /// Serialize to the on-disk 2048 bytes (unused union bytes and padding are zero).
    pub fn to_bytes(&self) -> [u8; 2048] {
        let mut b = [0u8; 2048];
        b[0..4].copy_from_slice(&COWD_MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 8, self.flags);
        put32(&mut b, 12, self.num_sectors);
        put32(&mut b, 16, self.granularity_sectors);
        put32(&mut b, 20, self.gd_offset_sectors);
        put32(&mut b, 24, self.num_gd_entries);
        put32(&mut b, 28, self.free_sector);
        match &self.link {
            CowdLink::Root {
                cylinders,
                heads,
                sectors,
            } => {
                put32(&mut b, 32, *cylinders);
                put32(&mut b, 36, *heads);
                put32(&mut b, 40, *sectors);
            }
            CowdLink::Child {
                parent_file_name,
                parent_generation,
            } => {
                b[32..1056].copy_from_slice(&parent_file_name[..]);
                put32(&mut b, 1056, *parent_generation);
            }
        }
        put32(&mut b, 1060, self.generation);
        b[1064..1124].copy_from_slice(&self.name);
        b[1124..1636].copy_from_slice(&self.description);
        put32(&mut b, 1636, self.saved_generation);
        b[1640..1648].copy_from_slice(&self.reserved);
        put32(&mut b, 1648, self.unclean_shutdown);
        b
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.num_sectors) * SECTOR
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        u64::from(self.granularity_sectors) * SECTOR
    }

    /// First sector after the grain directory.
    pub fn gd_end_sector(&self) -> u64 {
        u64::from(self.gd_offset_sectors) + (u64::from(self.num_gd_entries) * 4).div_ceil(SECTOR)
    }
}

/// Whether `path` starts with the COWD magic.
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read.
pub fn is_cowd_file(path: &Path) -> Result<bool> {
    let file = PathFile::open(path, false)?;
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0, "magic") {
        Ok(()) => Ok(magic == COWD_MAGIC),
        Err(Error::Truncated { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
