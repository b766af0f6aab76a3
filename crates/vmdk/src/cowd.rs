//! ESX redo-log extents ("vmfsSparse", magic `COWD`, data file `NAME-delta.vmdk`).
//!
//! Spec: `/work/shared/specs/vmdk.md` §5. Sources: qemu `block/vmdk.c`
//! (`vmdk_open_vmfs_sparse`, `get_cluster_offset`, `vmdk_pwritev`) and VMware's vmkernel
//! `cow.c` / `cow_ext.h` (ESX 2.x, the only VMware source for the allocator).
//!
//! # Header (2048 bytes, sector 0..4, all integers u32 little-endian)
//!
//! | off  | size | type    | field | meaning | valid values |
//! |------|------|---------|-------|---------|--------------|
//! | 0    | 4    | bytes   | magic | `"COWD"` | exactly |
//! | 4    | 4    | u32 LE  | version | format version | 1 |
//! | 8    | 4    | u32 LE  | flags | 0x1 root (geometry in the union), 0x2 check-capable, 0x4 inconsistent | ESX writes 3 |
//! | 12   | 4    | u32 LE  | numSectors | extent capacity, sectors | any |
//! | 16   | 4    | u32 LE  | granularity | grain size, sectors | power of two 1..=2048; ESX writes 1 |
//! | 20   | 4    | u32 LE  | gdOffset | grain directory, sectors | ≥ 4; ESX and vcb write 4 |
//! | 24   | 4    | u32 LE  | numGDEntries | GD length | ceil(numSectors / (4096 × granularity)), or that rounded up to a whole GD sector (128 entries, what vmkernel `cow.c` computes) |
//! | 28   | 4    | u32 LE  | freeSector | next free sector: a hint, "file length is real truth" (`cow_ext.h`) | ≥ end of the GD |
//! | 32   | 12   | 3×u32   | root: cylinders, heads, sectors | geometry (unused by ESX) | flags & 0x1 |
//! | 32   | 1024 | bytes   | child: parentFileName | NUL-terminated | flags & 0x1 clear |
//! | 1056 | 4    | u32 LE  | child: parentGeneration | | |
//! | 1060 | 4    | u32 LE  | generation | | |
//! | 1064 | 60   | bytes   | name | NUL-terminated | |
//! | 1124 | 512  | bytes   | description | NUL-terminated | |
//! | 1636 | 4    | u32 LE  | savedGeneration | VMFS generation at clean close | |
//! | 1640 | 8    | bytes   | reserved | | |
//! | 1648 | 4    | u32 LE  | uncleanShutdown | set while open for writing | 0 when closed cleanly |
//! | 1652 | 396  | bytes   | padding | | zero |
//!
//! # Grain directory and grain tables
//!
//! The GD holds numGDEntries u32 sector numbers of grain tables (0 = no table yet). Each GT
//! holds 4096 u32 entries (16 KiB) and covers 4096 grains. A GT entry is the sector of the
//! grain's data, or 0: unallocated, reads fall through to the parent. There is no zeroed-grain
//! entry. Lookup: `gt = gd[lba / (4096 × gran)]`, `grain = gt[(lba / gran) % 4096]`.
//!
//! # Layout vcb creates, and why
//!
//! Header (sectors 0..4), GD at sector 4, then **every GT preallocated** (zero-filled holes of a
//! sparse file), then data from `freeSector` (rounded up to a grain). ESX allocates GTs lazily
//! at `freeSector`, but qemu cannot: `get_cluster_offset` returns "unallocated" for a GD entry of
//! 0 even when asked to allocate, and `vmdk_pwritev` then writes to an unset cluster offset
//! (the header corruption the spec §6 warns about). With all GTs present qemu only ever fills GT
//! entries, which it can do. ESX reads such a file as one whose GTs were all allocated earlier.
//!
//! # Allocation (matches qemu)
//!
//! qemu appends each new grain at `ROUND_UP(file length in sectors, granularity)` and never
//! updates `freeSector`; vmkernel trusts `freeSector` only after a clean close. vcb therefore
//! appends at `max(freeSector, EOF, end of GD)` rounded up to a grain, so grains qemu wrote past
//! a stale `freeSector` are never overwritten, and our files' EOF equals `freeSector` so qemu
//! appends exactly where we would. A write to an unallocated grain writes the whole grain: the
//! uncovered part comes from the caller's [`Backing`] (copy-on-write), as qemu does.
//!
//! # Reading
//!
//! `map` merges grains of one state across GTs; `read_at` coalesces grains that are also
//! contiguous in the file into one pread. GTs are cached (at most 1024 = 16 MiB); tables that
//! hold only zeros are remembered in a flag per GD entry instead, and untouched preallocated
//! tables are recognised as file-system holes with `SEEK_DATA` without reading them, so mapping
//! an empty 256 GiB delta costs a few syscalls, not 2 GiB of reads.
//!
//! # Crash ordering
//!
//! Grain data (and a GT allocated for a GD entry of 0) is written at once; GT entries and GD
//! entries are kept dirty in memory. [`Extent::flush`] writes
//! data (fdatasync), then the dirty GTs, then dirty GD sectors, then `freeSector`, and fsyncs.
//! A crash therefore loses recent writes but never leaves a GT entry pointing at unwritten data.
//! `uncleanShutdown` is set (and synced) before the first write and cleared by
//! [`Extent::close`] when this handle set it.

use crate::check::CheckReport;
use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::{self, PathFile};
use crate::magic::{COWD_GTES_PER_GT, COWD_HEADER_BYTES, COWD_MAGIC, SECTOR};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Grain size ESX writes for redo logs, in sectors (`COWDISK_DEFAULT_GRAN` in `cow_ext.h`:
/// one sector, so ESX never has to copy from the parent before a write).
pub const ESX_GRANULARITY_SECTORS: u64 = 1;
/// Largest grain accepted, in sectors (1 MiB; qemu's own limit is 1 GiB, nobody writes more
/// than a few KiB).
pub const MAX_GRANULARITY_SECTORS: u64 = 2048;
/// Header flag: the union holds root geometry rather than a parent file name.
pub const COWD_FLAG_ROOT: u32 = 0x1;
/// Header flag: the file can be checked (`COWDISK_CHECKCAPABLE`).
pub const COWD_FLAG_CHECK_CAPABLE: u32 = 0x2;

/// The only COWD version.
const COWD_VERSION: u32 = 1;
/// Header sectors before the GD (`COWDISK_DEFAULT_ROOTOFF`).
const HEADER_SECTORS: u64 = COWD_HEADER_BYTES / SECTOR;
/// Bytes of one grain table.
const GT_BYTES: u64 = COWD_GTES_PER_GT * 4;
/// Sectors of one grain table.
const GT_SECTORS: u64 = GT_BYTES / SECTOR;
/// GD entries per 512-byte sector.
const GD_ENTRIES_PER_SECTOR: u64 = SECTOR / 4;
/// Grain tables kept in memory: 1024 × 16 KiB = 16 MiB.
const GT_CACHE_SLOTS: usize = 1024;
/// Largest run of contiguous grain data gathered before one pwrite.
const MAX_PENDING_BYTES: usize = 4 << 20;
/// Sector numbers are u32; the header's freeSector must fit too.
const MAX_FILE_SECTORS: u64 = u32::MAX as u64;
/// Damaged GD/GT entries `check` lists one by one before only counting them.
const MAX_LISTED_ENTRIES: u64 = 1000;
/// Byte offsets of the header fields rewritten in place.
const OFF_FREE_SECTOR: u64 = 28;
const OFF_UNCLEAN_SHUTDOWN: u64 = 1648;
/// Geometry written into root headers (ESX ignores it; heads/sectors as for non-IDE disks).
const GEOMETRY_HEADS: u32 = 255;
const GEOMETRY_SECTORS: u32 = 63;

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
    /// Flags ([`COWD_FLAG_ROOT`], [`COWD_FLAG_CHECK_CAPABLE`], 0x4 inconsistent).
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

fn len64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A `usize` for an in-memory index or length already bounded by a u32 field or the GT size.
fn small(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Byte offset of the first data at or after `from` according to the file system
/// (`SEEK_DATA`): `u64::MAX` when only holes follow, `from` when the file system cannot tell.
fn next_data_offset(file: &PathFile, from: u64) -> u64 {
    let Ok(offset) = libc::off_t::try_from(from) else {
        return from;
    };
    // SAFETY: lseek has no memory-safety preconditions; the descriptor stays open for the call
    // (borrowed from `file`). It moves the file position, which this module never uses: all
    // I/O here is positional (pread/pwrite).
    let found = unsafe { libc::lseek(file.file().as_raw_fd(), offset, libc::SEEK_DATA) };
    if found >= 0 {
        return u64::try_from(found).unwrap_or(from);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => u64::MAX,
        _ => from,
    }
}

fn granularity_ok(g: u64) -> bool {
    (1..=MAX_GRANULARITY_SECTORS).contains(&g) && g.is_power_of_two()
}

/// GD entries needed to cover `num_sectors` with `granularity` (> 0) sector grains.
fn gd_entries_needed(num_sectors: u64, granularity: u64) -> u64 {
    num_sectors.div_ceil(COWD_GTES_PER_GT * granularity)
}

impl CowdHeader {
    /// Parse and validate a header from the first 2048 bytes of `buf`; `path` names the file
    /// in errors. Checks only what the header alone can tell (file-length checks happen in
    /// [`CowdExtent::open`]).
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

/// What [`CowdExtent::load_gt`] found for a GD entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GtState {
    /// GD entry 0: no table.
    Absent,
    /// A table known to hold only zeros (not cached: nothing to look up).
    Zero,
    /// The table is in the cache.
    Cached,
}

/// One cached grain table.
struct GtSlot {
    entries: Vec<u32>,
    dirty: bool,
    last_use: u64,
}

/// Grain data gathered for one pwrite.
#[derive(Default)]
struct Pending {
    offset_bytes: u64,
    buf: Vec<u8>,
}

/// A COWD extent opened for reading or writing. See the module documentation.
pub struct CowdExtent {
    file: PathFile,
    header: CowdHeader,
    writable: bool,
    len_bytes: u64,
    gran_sectors: u64,
    grain_bytes: u64,
    /// First sector after header and GD: no grain or GT may start below it.
    meta_end_sector: u64,
    gd: Vec<u32>,
    /// GTs known to be all zeros on disk and not cached (fresh preallocated tables).
    zero_gts: Vec<bool>,
    /// A byte range `[start, end)` of the file known to be a hole (from `SEEK_DATA`);
    /// forgotten whenever this handle writes.
    hole: (u64, u64),
    /// Indices of GD sectors (relative to gdOffset) changed since the last flush.
    gd_dirty: BTreeSet<u64>,
    cache: HashMap<u64, GtSlot>,
    cache_slots: usize,
    tick: u64,
    next_free_sector: u64,
    file_len_bytes: u64,
    pending: Pending,
    data_dirty: bool,
    /// Space was allocated since the last flush (freeSector must be rewritten).
    allocated: bool,
    unclean_set_here: bool,
}

impl CowdExtent {
    /// Open the COWD file `path` as an extent of `len_bytes` (the descriptor's sector count ×
    /// 512), read-only or for writing. Reads the header and the GD; GTs are read on demand.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`Error::Truncated`] if the header or GD
    /// lies past EOF; [`Error::BadHeader`] as for [`CowdHeader::parse`]; [`Error::Corrupt`]
    /// if `len_bytes` exceeds the header's capacity.
    pub fn open(path: &Path, len_bytes: u64, writable: bool) -> Result<Self> {
        let file = PathFile::open(path, writable)?;
        let file_len_bytes = file.len()?;
        let mut raw = vec![0u8; small(COWD_HEADER_BYTES)];
        file.read_exact_at(&mut raw, 0, "COWD header")?;
        let header = CowdHeader::parse(&raw, path)?;
        if len_bytes > header.capacity_bytes() {
            return Err(Error::corrupt(
                path,
                format!(
                    "the descriptor gives the extent {len_bytes} bytes but the COWD header holds only {}",
                    header.capacity_bytes()
                ),
            ));
        }
        let gran_sectors = u64::from(header.granularity_sectors);
        let gd_offset_bytes = u64::from(header.gd_offset_sectors) * SECTOR;
        let mut gd_raw = vec![0u8; small(u64::from(header.num_gd_entries) * 4)];
        file.read_exact_at(&mut gd_raw, gd_offset_bytes, "COWD grain directory")?;
        let gd: Vec<u32> = gd_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let gd_len = gd.len();
        let meta_end_sector = header.gd_end_sector();
        // qemu appends at EOF and leaves freeSector stale: never allocate below either.
        let next_free_sector = u64::from(header.free_sector)
            .max(file_len_bytes.div_ceil(SECTOR))
            .max(meta_end_sector);
        Ok(CowdExtent {
            writable,
            len_bytes,
            gran_sectors,
            grain_bytes: gran_sectors * SECTOR,
            meta_end_sector,
            zero_gts: vec![false; gd_len],
            hole: (0, 0),
            gd,
            gd_dirty: BTreeSet::new(),
            cache: HashMap::new(),
            cache_slots: GT_CACHE_SLOTS,
            tick: 0,
            next_free_sector,
            file_len_bytes,
            pending: Pending::default(),
            data_dirty: false,
            allocated: false,
            unclean_set_here: false,
            header,
            file,
        })
    }

    /// The header as read at open (freeSector and uncleanShutdown track later updates).
    pub fn header(&self) -> &CowdHeader {
        &self.header
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len_bytes => Ok(()),
            _ => Err(Error::OutOfRange {
                path: self.path().to_path_buf(),
                offset,
                len,
                capacity: self.len_bytes,
            }),
        }
    }

    /// A grain or GT entry must start after the GD and, for grains, end within the file.
    fn check_grain(&self, gt: u64, index: u64, entry: u32) -> Result<()> {
        let sector = u64::from(entry);
        if sector < self.meta_end_sector {
            return Err(Error::corrupt(
                self.path(),
                format!("GT {gt} entry {index} points into the header or grain directory (sector {sector:#x})"),
            ));
        }
        if (sector + self.gran_sectors) * SECTOR > self.file_len_bytes {
            return Err(Error::GrainPastEof {
                path: self.path().to_path_buf(),
                gt,
                index,
                sector,
            });
        }
        Ok(())
    }

    /// Look up GT `gd_index`, reading it into the cache unless it is absent or all zeros.
    fn load_gt(&mut self, gd_index: u64) -> Result<GtState> {
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
    fn cache_gt_for_write(&mut self, gd_index: u64) -> Result<()> {
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

    fn insert_gt(&mut self, gd_index: u64, entries: Vec<u32>, dirty: bool) -> Result<()> {
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
    fn entry(&self, gd_index: u64, index: u64) -> u32 {
        self.cache
            .get(&gd_index)
            .and_then(|s| s.entries.get(small(index)).copied())
            .unwrap_or(0)
    }

    /// The run of grains starting at `first` (before `limit`) sharing the first grain's state.
    /// Returns the first grain's GT entry (0 = unallocated) and the run length in grains (≥ 1).
    /// With `physical`, data grains must also be contiguous in the file.
    fn scan(&mut self, first: u64, limit: u64, physical: bool) -> Result<(u32, u64)> {
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
    fn allocate_gt(&mut self, gd_index: u64) -> Result<()> {
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

    fn write_pending(&mut self) -> Result<()> {
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

    fn mark_unclean(&mut self) -> Result<()> {
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
    fn write_grains(
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
    fn set_cache_slots(&mut self, slots: usize) {
        self.cache_slots = slots.max(1);
    }
}

impl Extent for CowdExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        self.check_range(offset, max_len)?;
        if max_len == 0 {
            return Ok((BlockState::Unallocated, 0));
        }
        let end = offset + max_len;
        let first = offset / self.grain_bytes;
        let (entry, grains) = self.scan(first, end.div_ceil(self.grain_bytes), false)?;
        let run_end = ((first + grains) * self.grain_bytes).min(end);
        let state = if entry == 0 {
            BlockState::Unallocated
        } else {
            BlockState::Data
        };
        Ok((state, run_end - offset))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, len64(buf.len()))?;
        let end = offset + len64(buf.len());
        let mut done = 0usize;
        while done < buf.len() {
            let cur = offset + len64(done);
            let grain = cur / self.grain_bytes;
            let (entry, grains) = self.scan(grain, end.div_ceil(self.grain_bytes), true)?;
            let run_end = ((grain + grains) * self.grain_bytes).min(end);
            let chunk = &mut buf[done..small(run_end - offset)];
            if entry == 0 {
                chunk.fill(0);
            } else {
                let at = u64::from(entry) * SECTOR + cur % self.grain_bytes;
                self.file.read_exact_at(chunk, at, "COWD grain")?;
            }
            done += chunk.len();
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8], backing: &mut dyn Backing) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly {
                path: self.path().to_path_buf(),
                reason: "COWD extent opened read-only",
            });
        }
        self.check_range(offset, len64(data.len()))?;
        if data.is_empty() {
            return Ok(());
        }
        self.mark_unclean()?;
        let mut new_entries = Vec::new();
        let written = self
            .write_grains(offset, data, backing, &mut new_entries)
            .and_then(|()| self.write_pending());
        if let Err(e) = written {
            // New grains stay unreferenced (leaked space, never garbage in the GTs).
            self.pending.buf.clear();
            return Err(e);
        }
        for (gd_index, index, entry) in new_entries {
            self.cache_gt_for_write(gd_index)?;
            if let Some(slot) = self.cache.get_mut(&gd_index) {
                if let Some(e) = slot.entries.get_mut(small(index)) {
                    *e = entry;
                    slot.dirty = true;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.write_pending()?;
        let gts_dirty = self.cache.values().any(|s| s.dirty);
        // Only a handle that allocated rewrites freeSector: an unmodified file stays untouched.
        let free_changed =
            self.allocated && self.next_free_sector != u64::from(self.header.free_sector);
        if !self.data_dirty && !gts_dirty && self.gd_dirty.is_empty() && !free_changed {
            return Ok(());
        }
        // Data first: a GT entry must never reach the disk before the grain it points to.
        self.file.sync_data()?;
        self.hole = (0, 0);
        for (gd_index, slot) in self.cache.iter_mut().filter(|(_, s)| s.dirty) {
            let sector = u64::from(self.gd.get(small(*gd_index)).copied().unwrap_or(0));
            let raw: Vec<u8> = slot.entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.file.write_all_at(&raw, sector * SECTOR)?;
            slot.dirty = false;
        }
        let gd_offset_bytes = u64::from(self.header.gd_offset_sectors) * SECTOR;
        for gd_sector in std::mem::take(&mut self.gd_dirty) {
            let first = small(gd_sector * GD_ENTRIES_PER_SECTOR);
            let last = (first + small(GD_ENTRIES_PER_SECTOR)).min(self.gd.len());
            let raw: Vec<u8> = self.gd[first..last]
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect();
            self.file
                .write_all_at(&raw, gd_offset_bytes + gd_sector * SECTOR)?;
        }
        if free_changed {
            let free = u32::try_from(self.next_free_sector)
                .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
            self.file
                .write_all_at(&free.to_le_bytes(), OFF_FREE_SECTOR)?;
            self.header.free_sector = free;
        }
        self.file.sync_all()?;
        self.data_dirty = false;
        self.allocated = false;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.flush()?;
        if self.unclean_set_here {
            self.file
                .write_all_at(&0u32.to_le_bytes(), OFF_UNCLEAN_SHUTDOWN)?;
            self.file.sync_all()?;
            self.header.unclean_shutdown = 0;
            self.unclean_set_here = false;
        }
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path().to_path_buf()]
    }

    fn allocated_file_bytes(&self) -> u64 {
        self.file.allocated_bytes()
    }
}

impl Drop for CowdExtent {
    /// Best effort: keep what was written if the owner forgot `close()`. uncleanShutdown stays
    /// set, so `check` reports the missing close. Errors cannot be reported from here.
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
    }
}

/// Create a new, empty redo-log data file (`NAME-delta.vmdk`) of `capacity_bytes` with grains
/// of `granularity_sectors` ([`ESX_GRANULARITY_SECTORS`] is what ESX writes): header, GD at
/// sector 4, every GT preallocated (so qemu can write into it, see the module docs), data from
/// `freeSector`. The file is fsynced, and its directory too.
///
/// # Errors
/// [`Error::InvalidArgument`] if the capacity is 0, not a multiple of 512 or above 2^32 − 1
/// sectors, or the granularity is not a power of two in 1..=2048; [`Error::AlreadyExists`] if
/// `path` exists; [`Error::Io`] on write failure (the partial file is removed).
pub fn create(path: &Path, capacity_bytes: u64, granularity_sectors: u64) -> Result<()> {
    let (header, gd) = fresh_layout(path, capacity_bytes, granularity_sectors)?;
    let file = PathFile::create_new(path)?;
    let written = write_fresh(&file, &header, &gd);
    if written.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Header and GD bytes of a fresh extent (see [`create`] for the errors).
fn fresh_layout(
    path: &Path,
    capacity_bytes: u64,
    granularity_sectors: u64,
) -> Result<(CowdHeader, Vec<u8>)> {
    let invalid = |why: &str| {
        Error::InvalidArgument(format!(
            "{}: cannot create COWD extent: {why}",
            path.display()
        ))
    };
    // `is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    let partial_sector = capacity_bytes % SECTOR != 0;
    if capacity_bytes == 0 || partial_sector {
        return Err(invalid("capacity must be a non-zero multiple of 512 bytes"));
    }
    let num_sectors = u32::try_from(capacity_bytes / SECTOR)
        .map_err(|_| invalid("capacity exceeds 2^32 - 1 sectors"))?;
    if !granularity_ok(granularity_sectors) {
        return Err(invalid(
            "granularity must be a power of two from 1 to 2048 sectors",
        ));
    }
    let gd_entries = gd_entries_needed(u64::from(num_sectors), granularity_sectors);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let first_gt = HEADER_SECTORS + gd_sectors;
    let free_sector = (first_gt + gd_entries * GT_SECTORS).next_multiple_of(granularity_sectors);
    let too_big = |_| invalid("metadata would not fit 32-bit sector numbers");
    let header = CowdHeader {
        version: COWD_VERSION,
        flags: COWD_FLAG_ROOT | COWD_FLAG_CHECK_CAPABLE,
        num_sectors,
        granularity_sectors: u32::try_from(granularity_sectors).map_err(too_big)?,
        gd_offset_sectors: u32::try_from(HEADER_SECTORS).map_err(too_big)?,
        num_gd_entries: u32::try_from(gd_entries).map_err(too_big)?,
        free_sector: u32::try_from(free_sector).map_err(too_big)?,
        link: CowdLink::Root {
            cylinders: num_sectors / (GEOMETRY_HEADS * GEOMETRY_SECTORS),
            heads: GEOMETRY_HEADS,
            sectors: GEOMETRY_SECTORS,
        },
        generation: 0,
        name: [0; 60],
        description: [0; 512],
        saved_generation: 0,
        reserved: [0; 8],
        unclean_shutdown: 0,
    };
    let mut gd = Vec::with_capacity(small(gd_entries * 4));
    for i in 0..gd_entries {
        let gt = u32::try_from(first_gt + i * GT_SECTORS).map_err(too_big)?;
        gd.extend_from_slice(&gt.to_le_bytes());
    }
    Ok((header, gd))
}

fn write_fresh(file: &PathFile, header: &CowdHeader, gd: &[u8]) -> Result<()> {
    file.write_all_at(&header.to_bytes(), 0)?;
    file.write_all_at(gd, u64::from(header.gd_offset_sectors) * SECTOR)?;
    // The GTs stay holes of zeros; EOF = freeSector, so qemu appends where we would.
    file.set_len(u64::from(header.free_sector) * SECTOR)?;
    file.sync_all()?;
    let dir = file
        .path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fileio::sync_dir(dir)
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

/// Check a COWD file's metadata and, with `repair`, fix what can be fixed:
/// uncleanShutdown set (cleared); GD entries past EOF or inside the metadata (replaced by a new
/// empty GT: those grains then read from the parent); GT entries past EOF or inside the
/// metadata (cleared); freeSector below the end of the used space, as qemu leaves it (raised);
/// freeSector past EOF (file extended).
///
/// # Errors
/// Those of [`CowdHeader::parse`]; [`Error::Truncated`] if the header or GD lies past EOF;
/// [`Error::Io`] on read or (repair) write failure.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport> {
    let file = PathFile::open(path, repair)?;
    let mut raw = vec![0u8; small(COWD_HEADER_BYTES)];
    file.read_exact_at(&mut raw, 0, "COWD header")?;
    let header = CowdHeader::parse(&raw, path)?;
    let mut checker = Checker::new(file, header, repair)?;
    checker.grain_tables()?;
    checker.header_fields()?;
    Ok(checker.report)
}

/// State of one [`check`] run.
struct Checker {
    file: PathFile,
    header: CowdHeader,
    repair: bool,
    report: CheckReport,
    file_len_bytes: u64,
    gd: Vec<u32>,
    gd_changed: bool,
    /// End of everything in use (GTs and grains), sectors.
    used_end_sector: u64,
    /// Where repair puts replacement GTs.
    next_free_sector: u64,
    /// A byte range known to be a hole (see [`CowdExtent`]); forgotten on repair writes.
    hole: (u64, u64),
    /// Damaged entries listed one per line, and beyond that only counted.
    listed: u64,
    unlisted: u64,
}

impl Checker {
    fn new(file: PathFile, header: CowdHeader, repair: bool) -> Result<Self> {
        let file_len_bytes = file.len()?;
        let mut gd_raw = vec![0u8; small(u64::from(header.num_gd_entries) * 4)];
        file.read_exact_at(
            &mut gd_raw,
            u64::from(header.gd_offset_sectors) * SECTOR,
            "COWD grain directory",
        )?;
        let gd = gd_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let used_end_sector = header.gd_end_sector();
        let next_free_sector = u64::from(header.free_sector).max(file_len_bytes.div_ceil(SECTOR));
        Ok(Checker {
            file,
            header,
            repair,
            report: CheckReport::default(),
            file_len_bytes,
            gd,
            gd_changed: false,
            used_end_sector,
            next_free_sector,
            hole: (0, 0),
            listed: 0,
            unlisted: 0,
        })
    }

    fn name(&self) -> String {
        self.file.path().display().to_string()
    }

    fn grain_tables(&mut self) -> Result<()> {
        let gran = u64::from(self.header.granularity_sectors);
        let meta_end = self.header.gd_end_sector();
        let needed = gd_entries_needed(u64::from(self.header.num_sectors), gran);
        for i in 0..needed {
            let sector = u64::from(self.gd.get(small(i)).copied().unwrap_or(0));
            if sector == 0 {
                continue;
            }
            if sector < meta_end || (sector + GT_SECTORS) * SECTOR > self.file_len_bytes {
                let where_ = if sector < meta_end {
                    "into the header or grain directory"
                } else {
                    "past end of file"
                };
                let problem = format!(
                    "{}: GD entry {i} points {where_} (sector {sector:#x})",
                    self.name()
                );
                let repaired = if self.repair {
                    let new = self.replace_gt(i)?;
                    Some(format!(
                        "{}: GD entry {i} now points to a new empty grain table at sector {new:#x}; its grains read from the parent",
                        self.name()
                    ))
                } else {
                    None
                };
                self.note(problem, repaired);
                continue;
            }
            self.used_end_sector = self.used_end_sector.max(sector + GT_SECTORS);
            self.grain_table(i, sector, gran, meta_end)?;
        }
        if self.unlisted > 0 {
            let (name, n) = (self.name(), self.unlisted);
            self.report.problem(format!(
                "{name}: {n} more damaged GD/GT entries (not listed)"
            ));
            if self.repair {
                self.report
                    .repaired(format!("{name}: {n} more GD/GT entries repaired"));
            }
        }
        Ok(())
    }

    /// Record a damaged GD/GT entry; past [`MAX_LISTED_ENTRIES`] only count it.
    fn note(&mut self, problem: String, repaired: Option<String>) {
        if self.listed >= MAX_LISTED_ENTRIES {
            self.unlisted += 1;
            return;
        }
        self.listed += 1;
        self.report.problem(problem);
        if let Some(r) = repaired {
            self.report.repaired(r);
        }
    }

    fn grain_table(&mut self, gt: u64, sector: u64, gran: u64, meta_end: u64) -> Result<()> {
        let offset = sector * SECTOR;
        if !(self.hole.0 <= offset && offset + GT_BYTES <= self.hole.1) {
            self.hole = (offset, next_data_offset(&self.file, offset));
        }
        if offset + GT_BYTES <= self.hole.1 {
            return Ok(()); // an untouched preallocated table: all zeros
        }
        let mut raw = vec![0u8; small(GT_BYTES)];
        self.file
            .read_exact_at(&mut raw, offset, "COWD grain table")?;
        let mut changed = false;
        for (index, chunk) in raw.chunks_exact_mut(4).enumerate() {
            let entry = u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            if entry == 0 {
                continue;
            }
            if entry >= meta_end && (entry + gran) * SECTOR <= self.file_len_bytes {
                self.used_end_sector = self.used_end_sector.max(entry + gran);
                continue;
            }
            let where_ = if entry < meta_end {
                "into the header or grain directory"
            } else {
                "past end of file"
            };
            let problem = format!(
                "{}: GT {gt} entry {index} points {where_} (sector {entry:#x})",
                self.name()
            );
            let repaired = self.repair.then(|| {
                format!(
                    "{}: GT {gt} entry {index} cleared; the grain reads from the parent",
                    self.name()
                )
            });
            if self.repair {
                chunk.fill(0);
                changed = true;
            }
            self.note(problem, repaired);
        }
        if changed {
            self.file.write_all_at(&raw, sector * SECTOR)?;
            self.hole = (0, 0);
        }
        Ok(())
    }

    fn replace_gt(&mut self, gd_index: u64) -> Result<u64> {
        self.hole = (0, 0);
        let sector = self.next_free_sector;
        let entry = u32::try_from(sector)
            .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
        self.file
            .write_all_at(&vec![0u8; small(GT_BYTES)], sector * SECTOR)?;
        self.next_free_sector = sector + GT_SECTORS;
        self.file_len_bytes = self.file_len_bytes.max(self.next_free_sector * SECTOR);
        self.used_end_sector = self.used_end_sector.max(self.next_free_sector);
        if let Some(e) = self.gd.get_mut(small(gd_index)) {
            *e = entry;
        }
        self.gd_changed = true;
        Ok(sector)
    }

    fn header_fields(&mut self) -> Result<()> {
        let name = self.name();
        let mut changed = self.gd_changed;
        if self.gd_changed {
            let raw: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.file
                .write_all_at(&raw, u64::from(self.header.gd_offset_sectors) * SECTOR)?;
        }
        if self.header.unclean_shutdown != 0 {
            self.report.problem(format!(
                "{name}: not closed cleanly (uncleanShutdown = {})",
                self.header.unclean_shutdown
            ));
            if self.repair {
                self.file
                    .write_all_at(&0u32.to_le_bytes(), OFF_UNCLEAN_SHUTDOWN)?;
                changed = true;
                self.report
                    .repaired(format!("{name}: uncleanShutdown cleared"));
            }
        }
        let mut free = u64::from(self.header.free_sector);
        if free < self.used_end_sector {
            self.report.problem(format!(
                "{name}: freeSector {free:#x} lies below the end of the used space {:#x} (qemu does not update freeSector)",
                self.used_end_sector
            ));
            if self.repair {
                let raised = u32::try_from(self.used_end_sector)
                    .map_err(|_| Error::unsupported(self.file.path(), "COWD extent full"))?;
                self.file
                    .write_all_at(&raised.to_le_bytes(), OFF_FREE_SECTOR)?;
                free = u64::from(raised);
                changed = true;
                self.report
                    .repaired(format!("{name}: freeSector raised to {raised:#x}"));
            }
        }
        if free * SECTOR > self.file_len_bytes {
            self.report.problem(format!(
                "{name}: freeSector {free:#x} lies past end of file ({} bytes)",
                self.file_len_bytes
            ));
            if self.repair {
                self.file.set_len(free * SECTOR)?;
                changed = true;
                self.report
                    .repaired(format!("{name}: file extended to freeSector"));
            }
        }
        if changed {
            self.file.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Command, Output};

    const MIB: u64 = 1 << 20;

    /// Parent bytes held in memory.
    struct VecBacking<'a>(&'a [u8]);

    impl Backing for VecBacking<'_> {
        fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
            let start = small(offset);
            buf.copy_from_slice(&self.0[start..start + buf.len()]);
            Ok(())
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64*).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Read the whole extent as a chain of two links would: Data from the extent, the rest
    /// from the parent.
    fn chain_read(ext: &mut CowdExtent, parent: &[u8]) -> Vec<u8> {
        let len = ext.len_bytes();
        let mut out = vec![0u8; small(len)];
        let mut off = 0;
        while off < len {
            let (state, n) = ext.map(off, len - off).expect("map");
            assert!(n >= 1);
            let range = small(off)..small(off + n);
            match state {
                BlockState::Data => ext.read_at(off, &mut out[range]).expect("read_at"),
                _ => out[range.clone()].copy_from_slice(&parent[range]),
            }
            off += n;
        }
        out
    }

    fn assert_same(what: &str, got: &[u8], want: &[u8]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "{what}: first difference at byte {i:#x}: got {:#04x}, want {:#04x}",
                got[i], want[i]
            );
        }
    }

    fn root_header(num_sectors: u32, gran: u32) -> CowdHeader {
        fresh_layout(
            Path::new("t"),
            u64::from(num_sectors) * SECTOR,
            u64::from(gran),
        )
        .expect("layout")
        .0
    }

    fn patch32(path: &Path, offset: u64, value: u32) {
        let f = PathFile::open(path, true).expect("open");
        f.write_all_at(&value.to_le_bytes(), offset).expect("patch");
    }

    fn read32(path: &Path, offset: u64) -> u32 {
        let f = PathFile::open(path, false).expect("open");
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, offset, "field").expect("read");
        u32::from_le_bytes(b)
    }

    // ---- header ----

    #[test]
    fn header_round_trip_root_and_child() {
        let mut h = root_header(16384, 1);
        h.name[..4].copy_from_slice(b"disk");
        h.description[..3].copy_from_slice(b"abc");
        h.generation = 7;
        h.saved_generation = 9;
        h.reserved = [1, 2, 3, 4, 5, 6, 7, 8];
        h.unclean_shutdown = 1;
        let p = Path::new("x-delta.vmdk");
        assert_eq!(CowdHeader::parse(&h.to_bytes(), p).expect("parse root"), h);

        let mut name = [0u8; 1024];
        name[..10].copy_from_slice(b"parent.vmdk"[..10].as_ref());
        h.flags = COWD_FLAG_CHECK_CAPABLE;
        h.link = CowdLink::Child {
            parent_file_name: Box::new(name),
            parent_generation: 0x1234,
        };
        assert_eq!(CowdHeader::parse(&h.to_bytes(), p).expect("parse child"), h);
    }

    /// Backs the module's byte table: a header built by hand, byte by byte.
    #[test]
    fn header_fields_sit_where_the_table_says() {
        let mut b = [0u8; 2048];
        let mut put = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(4, 1);
        put(8, 3);
        put(12, 0x4000);
        put(16, 8);
        put(20, 4);
        put(24, 1);
        put(28, 0x100);
        put(32, 5);
        put(36, 255);
        put(40, 63);
        put(1060, 0x11);
        put(1636, 0x22);
        put(1648, 1);
        b[0..4].copy_from_slice(b"COWD");
        b[1064] = b'n';
        b[1124] = b'd';
        let h = CowdHeader::parse(&b, Path::new("t")).expect("parse");
        assert_eq!(
            (
                h.version,
                h.flags,
                h.num_sectors,
                h.granularity_sectors,
                h.gd_offset_sectors,
                h.num_gd_entries,
                h.free_sector
            ),
            (1, 3, 0x4000, 8, 4, 1, 0x100)
        );
        assert_eq!(
            h.link,
            CowdLink::Root {
                cylinders: 5,
                heads: 255,
                sectors: 63
            }
        );
        assert_eq!(
            (
                h.generation,
                h.saved_generation,
                h.unclean_shutdown,
                h.name[0],
                h.description[0]
            ),
            (0x11, 0x22, 1, b'n', b'd')
        );
        assert_eq!(h.to_bytes(), b);
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut b = root_header(16384, 1).to_bytes();
        b[0..4].copy_from_slice(b"KDMV");
        let err = CowdHeader::parse(&b, Path::new("/d/bad-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(err, Error::BadHeader { field: "magic", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("bad-delta.vmdk"), "{err}");
    }

    #[test]
    fn bad_granularity_is_refused() {
        for gran in [0u32, 3, 4096, 0x8000_0000] {
            let mut h = root_header(16384, 1);
            h.granularity_sectors = gran;
            let err = CowdHeader::parse(&h.to_bytes(), Path::new("/d/g-delta.vmdk"))
                .expect_err("must fail");
            assert!(
                matches!(
                    err,
                    Error::BadHeader {
                        field: "granularity",
                        ..
                    }
                ),
                "{gran}: {err}"
            );
            assert!(err.to_string().contains("g-delta.vmdk"), "{err}");
        }
    }

    #[test]
    fn gd_entries_mismatch_is_refused() {
        let mut h = root_header(16384, 1);
        assert_eq!(h.num_gd_entries, 4);
        h.num_gd_entries = 5;
        let err =
            CowdHeader::parse(&h.to_bytes(), Path::new("/d/n-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::BadHeader {
                    field: "numGDEntries",
                    value: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("n-delta.vmdk"), "{err}");
        // vmkernel cow.c rounds the GD up to whole sectors: accepted.
        h.num_gd_entries = 128;
        h.free_sector = 5 + 4 * 32;
        CowdHeader::parse(&h.to_bytes(), Path::new("t")).expect("rounded GD accepted");
    }

    #[test]
    fn free_sector_or_gd_inside_header_is_refused() {
        let mut h = root_header(16384, 1);
        h.free_sector = 4;
        let err =
            CowdHeader::parse(&h.to_bytes(), Path::new("/d/f-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::BadHeader {
                    field: "freeSector",
                    ..
                }
            ),
            "{err}"
        );
        let mut h = root_header(16384, 1);
        h.gd_offset_sectors = 2;
        let err =
            CowdHeader::parse(&h.to_bytes(), Path::new("/d/f-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::BadHeader {
                    field: "gdOffset",
                    ..
                }
            ),
            "{err}"
        );
        let mut h = root_header(16384, 1);
        h.version = 2;
        let err =
            CowdHeader::parse(&h.to_bytes(), Path::new("/d/f-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::BadHeader {
                    field: "version",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_header_is_refused() {
        let h = root_header(16384, 1).to_bytes();
        let err =
            CowdHeader::parse(&h[..100], Path::new("/d/t-delta.vmdk")).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "COWD header",
                    file_len: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("t-delta.vmdk"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-delta.vmdk");
        std::fs::write(&path, &h[..1000]).expect("write");
        let err = CowdExtent::open(&path, 8 * MIB, false)
            .err()
            .expect("must fail");
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "COWD header",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("t-delta.vmdk"), "{err}");
    }

    #[test]
    fn gd_past_eof_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gd-delta.vmdk");
        let mut h = root_header(16384, 1);
        h.gd_offset_sectors = 100;
        h.free_sector = 200;
        std::fs::write(&path, h.to_bytes()).expect("write");
        let err = CowdExtent::open(&path, 8 * MIB, false)
            .err()
            .expect("must fail");
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "COWD grain directory",
                    offset: 51200,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("gd-delta.vmdk"), "{err}");
        let err = check(&path, false).expect_err("check must fail too");
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
    }

    #[test]
    fn descriptor_larger_than_header_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big-delta.vmdk");
        create(&path, MIB, 1).expect("create");
        let err = CowdExtent::open(&path, 2 * MIB, false)
            .err()
            .expect("must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("big-delta.vmdk"), "{err}");
    }

    // ---- create / open ----

    #[test]
    fn create_lays_out_header_gd_and_preallocated_gts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        assert!(is_cowd_file(&path).expect("sniff"));
        let ext = CowdExtent::open(&path, 8 * MIB, false).expect("open");
        let h = ext.header();
        assert_eq!(
            (h.version, h.flags, h.num_sectors, h.granularity_sectors),
            (1, 3, 16384, 1)
        );
        assert_eq!((h.gd_offset_sectors, h.num_gd_entries), (4, 4));
        // Header 4 sectors, GD 1 sector, 4 GTs of 32 sectors.
        assert_eq!(ext.gd, vec![5, 37, 69, 101]);
        assert_eq!(h.free_sector, 133);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 133 * 512);
        assert_eq!(
            h.link,
            CowdLink::Root {
                cylinders: 1,
                heads: 255,
                sectors: 63
            }
        );
        assert!(check(&path, false).expect("check").is_clean());

        let path = dir.path().join("g-delta.vmdk");
        create(&path, 8 * MIB, 128).expect("create");
        let h = CowdExtent::open(&path, 8 * MIB, false)
            .expect("open")
            .header()
            .clone();
        // One GT at 5 covers 4096 × 64 KiB; data starts at the next grain boundary.
        assert_eq!((h.num_gd_entries, h.free_sector), (1, 128));

        let err = create(&path, 8 * MIB, 1).expect_err("exists");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    }

    #[test]
    fn create_rejects_bad_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x-delta.vmdk");
        for (cap, gran) in [
            (0, 1),
            (1000, 1),
            (3 << 40, 1),
            (MIB, 0),
            (MIB, 3),
            (MIB, 4096),
        ] {
            let err = create(&path, cap, gran).expect_err("must fail");
            assert!(
                matches!(err, Error::InvalidArgument(_)),
                "{cap} {gran}: {err}"
            );
            assert!(err.to_string().contains("x-delta.vmdk"), "{err}");
        }
        assert!(!path.exists());
        create(&path, (u64::from(u32::MAX)) * 512, 1).expect("largest capacity");
        let h = CowdExtent::open(&path, 512, false)
            .expect("open")
            .header()
            .clone();
        assert_eq!(h.num_gd_entries, 1 << 20);
    }

    #[test]
    fn is_cowd_file_sniffs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("s");
        std::fs::write(&short, b"CO").expect("write");
        assert!(!is_cowd_file(&short).expect("short"));
        let other = dir.path().join("o");
        std::fs::write(&other, b"KDMV....").expect("write");
        assert!(!is_cowd_file(&other).expect("other"));
        let err = is_cowd_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn grain_past_eof_on_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        ext.write_at(512, &[7u8; 512], &mut crate::extent::ZeroBacking)
            .expect("write");
        ext.close().expect("close");
        drop(ext);
        // GT 0 lives at sector 5; entry 1 is the grain just written.
        patch32(&path, 5 * 512 + 4, 0x10_0000);
        let mut ext = CowdExtent::open(&path, 8 * MIB, false).expect("open");
        let mut buf = [0u8; 1024];
        let err = ext.read_at(0, &mut buf).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::GrainPastEof {
                    gt: 0,
                    index: 1,
                    sector: 0x10_0000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("e-delta.vmdk"), "{err}");
        let err = ext
            .map(0, 8 * MIB)
            .and_then(|_| ext.map(512, 512))
            .expect_err("map must fail");
        assert!(matches!(err, Error::GrainPastEof { .. }), "{err}");
        // A GD entry past EOF: the GT cannot be read.
        patch32(&path, 4 * 512 + 4, 0x00ff_0000);
        let mut ext = CowdExtent::open(&path, 8 * MIB, false).expect("open");
        let err = ext.map(2 * MIB, MIB).expect_err("must fail");
        assert!(
            matches!(
                err,
                Error::Truncated {
                    what: "COWD grain table",
                    ..
                }
            ),
            "{err}"
        );
        // An entry inside the metadata is corrupt, not past EOF.
        patch32(&path, 5 * 512 + 4, 2);
        let mut ext = CowdExtent::open(&path, 8 * MIB, false).expect("open");
        let err = ext.read_at(512, &mut buf[..512]).expect_err("must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn read_only_extent_refuses_writes_and_range_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r-delta.vmdk");
        create(&path, MIB, 1).expect("create");
        let mut ext = CowdExtent::open(&path, MIB, false).expect("open");
        let err = ext
            .write_at(0, &[1], &mut crate::extent::ZeroBacking)
            .expect_err("read-only");
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("r-delta.vmdk"), "{err}");
        let mut buf = [0u8; 2];
        let err = ext.read_at(MIB - 1, &mut buf).expect_err("out of range");
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        assert_eq!(
            ext.map(0, MIB).expect("map"),
            (BlockState::Unallocated, MIB)
        );
    }

    #[test]
    fn map_merges_runs_across_grain_tables_and_reads_coalesce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        let parent = noise(1, small(8 * MIB));
        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        // 1 MiB..5 MiB spans GTs 0, 1 and 2 (2 MiB each with 512-byte grains).
        let data = noise(2, small(4 * MIB));
        ext.write_at(MIB, &data, &mut VecBacking(&parent))
            .expect("write");
        assert_eq!(
            ext.map(0, 8 * MIB).expect("map"),
            (BlockState::Unallocated, MIB)
        );
        assert_eq!(
            ext.map(MIB, 7 * MIB).expect("map"),
            (BlockState::Data, 4 * MIB)
        );
        assert_eq!(
            ext.map(MIB + 100, 1000).expect("map"),
            (BlockState::Data, 1000)
        );
        assert_eq!(
            ext.map(5 * MIB, 3 * MIB).expect("map"),
            (BlockState::Unallocated, 3 * MIB)
        );
        // Physically contiguous grains: one scan covers the whole run.
        assert_eq!(ext.scan(2048, 16384, true).expect("scan").1, 8192);
        let mut back = vec![0u8; small(4 * MIB)];
        ext.read_at(MIB, &mut back).expect("read");
        assert_same("read back", &back, &data);
        ext.close().expect("close");
    }

    /// Grains adjacent on the disk but not in the file: read_at must not coalesce them.
    #[test]
    fn scattered_grains_read_back_in_one_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        for gran in [1u64, 8] {
            let path = dir.path().join(format!("s{gran}-delta.vmdk"));
            create(&path, 4 * MIB, gran).expect("create");
            let gb = gran * SECTOR;
            let data = noise(gran, small(64 * gb));
            let mut ext = CowdExtent::open(&path, 4 * MIB, true).expect("open");
            // Grains 100..164 written last first, so each lies before its predecessor in the file.
            for g in (0..64u64).rev() {
                let r = small(g * gb)..small((g + 1) * gb);
                ext.write_at((100 + g) * gb, &data[r], &mut crate::extent::ZeroBacking)
                    .expect("write");
            }
            assert_eq!(
                ext.map(100 * gb, 4 * MIB - 100 * gb).expect("map"),
                (BlockState::Data, 64 * gb)
            );
            assert_eq!(
                ext.scan(100, 164, true).expect("scan").1,
                1,
                "reversed grains are not contiguous"
            );
            let mut back = vec![0u8; data.len()];
            ext.read_at(100 * gb, &mut back).expect("read");
            assert_same("scattered read", &back, &data);
            // Straddling the run's edges and reading half grains.
            let mut part = vec![0u8; small(3 * gb)];
            ext.read_at(99 * gb + gb / 2, &mut part).expect("read");
            assert!(part[..small(gb / 2)].iter().all(|&b| b == 0));
            assert_same(
                "edge read",
                &part[small(gb / 2)..],
                &data[..small(2 * gb + gb / 2)],
            );
            ext.close().expect("close");
        }
    }

    /// A hole seen by SEEK_DATA must be forgotten once flush writes a GT into it.
    #[test]
    fn flushed_tables_are_not_mistaken_for_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        ext.set_cache_slots(1);
        let zero = &mut crate::extent::ZeroBacking;
        ext.write_at(4 * MIB, &[2; 512], zero)
            .expect("write GT 2 (dirty, a hole on disk)");
        // GTs 1..=2 are one hole on disk now (GT 0 shares a block with the header); GT 1 is
        // remembered as all zeros.
        assert_eq!(ext.load_gt(1).expect("load"), GtState::Zero);
        if ext.hole.1 < 101 * SECTOR {
            return; // a file system without holes: nothing is skipped, nothing to forget
        }
        // Caching GT 1 for a write evicts dirty GT 2: flush writes it into that hole.
        ext.cache_gt_for_write(1).expect("materialize");
        assert!(!ext.cache.contains_key(&2));
        assert_eq!(ext.map(4 * MIB, 512).expect("map"), (BlockState::Data, 512));
        ext.close().expect("close");
    }

    #[test]
    fn partial_grain_write_copies_the_rest_from_the_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p-delta.vmdk");
        create(&path, MIB, 16).expect("create");
        let parent = noise(3, small(MIB));
        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.write_at(8192 + 100, &[0xee; 50], &mut VecBacking(&parent))
            .expect("write");
        let (state, n) = ext.map(8192, 8192).expect("map");
        assert_eq!((state, n), (BlockState::Data, 8192));
        let mut grain = vec![0u8; 8192];
        ext.read_at(8192, &mut grain).expect("read");
        let mut want = parent[8192..16384].to_vec();
        want[100..150].fill(0xee);
        assert_same("cow grain", &grain, &want);
    }

    #[test]
    fn unclean_shutdown_is_set_on_first_write_and_cleared_by_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("u-delta.vmdk");
        create(&path, MIB, 1).expect("create");
        let before = std::fs::read(&path).expect("read");
        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.close().expect("close without writes");
        drop(ext);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "an unwritten extent is not modified"
        );

        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.write_at(0, &[1; 512], &mut crate::extent::ZeroBacking)
            .expect("write");
        assert_eq!(read32(&path, OFF_UNCLEAN_SHUTDOWN), 1);
        let report = check(&path, false).expect("check");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("not closed cleanly")),
            "{report:?}"
        );
        ext.close().expect("close");
        assert_eq!(read32(&path, OFF_UNCLEAN_SHUTDOWN), 0);
        assert_eq!(read32(&path, OFF_FREE_SECTOR), 5 + 32 + 1);
        assert!(check(&path, false).expect("check").is_clean());

        // Forgetting close(): Drop flushes the data but leaves the file marked unclean.
        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.write_at(4096, &[2; 512], &mut crate::extent::ZeroBacking)
            .expect("write");
        drop(ext);
        assert_eq!(read32(&path, OFF_UNCLEAN_SHUTDOWN), 1);
        let mut ext = CowdExtent::open(&path, MIB, false).expect("open");
        let mut b = [0u8; 512];
        ext.read_at(4096, &mut b).expect("read");
        assert_eq!(b, [2; 512]);
    }

    #[test]
    fn appends_past_a_stale_free_sector_like_qemu_leaves_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q-delta.vmdk");
        create(&path, MIB, 1).expect("create");
        let fresh_free = read32(&path, OFF_FREE_SECTOR);
        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.write_at(0, &[0xaa; 4096], &mut crate::extent::ZeroBacking)
            .expect("write");
        ext.close().expect("close");
        drop(ext);
        // What qemu does: grains appended, freeSector untouched.
        patch32(&path, OFF_FREE_SECTOR, fresh_free);
        let report = check(&path, false).expect("check");
        assert!(
            report.problems.iter().any(|p| p.contains("freeSector")),
            "{report:?}"
        );
        let mut ext = CowdExtent::open(&path, MIB, true).expect("open");
        ext.write_at(8192, &[0xbb; 4096], &mut crate::extent::ZeroBacking)
            .expect("write");
        ext.close().expect("close");
        let mut ext = CowdExtent::open(&path, MIB, false).expect("open");
        let mut got = vec![0u8; 4096];
        ext.read_at(0, &mut got).expect("read");
        assert_eq!(got, vec![0xaa; 4096], "old grains survive");
        ext.read_at(8192, &mut got).expect("read");
        assert_eq!(got, vec![0xbb; 4096]);
        assert!(check(&path, false).expect("check").is_clean());
    }

    /// A file laid out the way ESX makes it: GD entries 0, GTs allocated on first write.
    #[test]
    fn esx_style_lazy_grain_tables_are_allocated_on_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l-delta.vmdk");
        let mut h = root_header(16384, 1);
        h.free_sector = 5;
        let mut bytes = h.to_bytes().to_vec();
        bytes.resize(5 * 512, 0);
        std::fs::write(&path, &bytes).expect("write");
        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        assert_eq!(
            ext.map(0, 8 * MIB).expect("map"),
            (BlockState::Unallocated, 8 * MIB)
        );
        ext.write_at(3 * MIB, &[9; 1024], &mut crate::extent::ZeroBacking)
            .expect("write");
        ext.close().expect("close");
        drop(ext);
        assert_eq!(
            read32(&path, 4 * 512 + 4),
            5,
            "GT 1 allocated at the old freeSector"
        );
        assert_eq!(read32(&path, OFF_FREE_SECTOR), 5 + 32 + 2);
        let mut ext = CowdExtent::open(&path, 8 * MIB, false).expect("open");
        assert_eq!(
            ext.map(3 * MIB, MIB).expect("map"),
            (BlockState::Data, 1024)
        );
        assert!(check(&path, false).expect("check").is_clean());
    }

    #[test]
    fn check_repairs_what_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        ext.write_at(0, &[5; 2048], &mut crate::extent::ZeroBacking)
            .expect("write");
        ext.close().expect("close");
        drop(ext);
        patch32(&path, OFF_UNCLEAN_SHUTDOWN, 1);
        patch32(&path, 5 * 512 + 8, 0x00ff_ffff); // GT 0 entry 2 past EOF
        patch32(&path, 4 * 512 + 12, 0x00ff_0000); // GD entry 3 past EOF
        patch32(&path, OFF_FREE_SECTOR, 133); // below the 4 grains written

        let report = check(&path, false).expect("check");
        assert_eq!(report.problems.len(), 4, "{report:?}");
        assert!(report.repaired.is_empty());
        assert!(
            report.problems.iter().all(|p| p.contains("k-delta.vmdk")),
            "{report:?}"
        );
        let report = check(&path, true).expect("repair");
        assert_eq!(report.repaired.len(), 4, "{report:?}");
        assert!(report.is_clean());
        let report = check(&path, false).expect("check again");
        assert!(
            report.is_clean() && report.problems.is_empty(),
            "{report:?}"
        );

        let mut ext = CowdExtent::open(&path, 8 * MIB, true).expect("open");
        assert_eq!(ext.map(0, 2048).expect("map"), (BlockState::Data, 1024));
        assert_eq!(
            ext.map(1024, 512).expect("map"),
            (BlockState::Unallocated, 512)
        );
        ext.write_at(7 * MIB, &[1; 512], &mut crate::extent::ZeroBacking)
            .expect("write into replaced GT");
        ext.close().expect("close");
        assert!(check(&path, false).expect("check").is_clean());
    }

    #[test]
    fn check_lists_at_most_a_thousand_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-delta.vmdk");
        create(&path, 8 * MIB, 1).expect("create");
        // GT 0 full of entries past EOF.
        let gt: Vec<u8> = (0..4096u32)
            .flat_map(|_| 0x00ff_0000u32.to_le_bytes())
            .collect();
        PathFile::open(&path, true)
            .expect("open")
            .write_all_at(&gt, 5 * 512)
            .expect("write");
        let report = check(&path, false).expect("check");
        // 1000 entries, one summary line, freeSector is fine (nothing valid in use).
        assert_eq!(report.problems.len(), 1001, "{:?}", report.problems.last());
        assert!(
            report.problems[1000].contains("3096 more"),
            "{}",
            report.problems[1000]
        );
        let report = check(&path, true).expect("repair");
        assert!(report.is_clean() && report.repaired.len() == 1001);
        assert!(check(&path, false).expect("check").problems.is_empty());
    }

    // ---- model test ----

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            at: f64,
            len: usize,
            seed: u64,
        },
        /// Write ending where the previous write began (reverse allocation order).
        WriteBefore {
            len: usize,
            seed: u64,
        },
        Flush,
        Reopen,
        DropWithoutClose,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0.0f64..1.0, 1usize..20_000, any::<u64>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
            3 => (1usize..20_000, any::<u64>()).prop_map(|(len, seed)| Op::WriteBefore { len, seed }),
            1 => Just(Op::Flush),
            1 => Just(Op::Reopen),
            1 => Just(Op::DropWithoutClose),
        ]
    }

    fn run_model(gran_log: u32, cap_sectors: u64, lazy: bool, slots: usize, ops: &[Op]) {
        let gran = 1u64 << gran_log;
        let cap = cap_sectors * SECTOR;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m-delta.vmdk");
        create(&path, cap, gran).expect("create");
        if lazy {
            let h = CowdExtent::open(&path, cap, false)
                .expect("open")
                .header()
                .clone();
            for i in 0..u64::from(h.num_gd_entries) {
                patch32(&path, 4 * 512 + i * 4, 0);
            }
        }
        let parent = noise(cap_sectors ^ 0x55, small(cap));
        let mut model = parent.clone();
        let open = |p: &Path| {
            let mut e = CowdExtent::open(p, cap, true).expect("open");
            e.set_cache_slots(slots);
            e
        };
        let mut ext = open(&path);
        let mut prev_start = cap / 2;
        for op in ops {
            let (off, len, seed) = match op {
                Op::Write { at, len, seed } => {
                    let off = (((cap as f64) * at) as u64).min(cap - 1);
                    (off, (*len as u64).min(cap - off), *seed)
                }
                Op::WriteBefore { len, seed } => {
                    let len = (*len as u64).min(prev_start).max(1);
                    let off = prev_start.saturating_sub(len);
                    (off, len.min(cap - off), *seed)
                }
                Op::Flush | Op::Reopen | Op::DropWithoutClose => (0, 0, 0),
            };
            match op {
                Op::Write { .. } | Op::WriteBefore { .. } => {
                    let data = noise(seed, small(len));
                    ext.write_at(off, &data, &mut VecBacking(&parent))
                        .expect("write");
                    model[small(off)..small(off + len)].copy_from_slice(&data);
                    prev_start = off;
                }
                Op::Flush => ext.flush().expect("flush"),
                Op::Reopen => {
                    ext.close().expect("close");
                    ext = open(&path);
                }
                Op::DropWithoutClose => {
                    drop(ext);
                    ext = open(&path);
                }
            }
        }
        assert_same("before close", &chain_read(&mut ext, &parent), &model);
        ext.close().expect("close");
        drop(ext);
        let mut ext = CowdExtent::open(&path, cap, false).expect("reopen");
        assert_same("after reopen", &chain_read(&mut ext, &parent), &model);
        let report = check(&path, false).expect("check");
        // Only an earlier DropWithoutClose may leave the file marked unclean.
        assert!(
            report
                .problems
                .iter()
                .all(|p| p.contains("not closed cleanly")),
            "{report:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn random_writes_match_a_model(
            gran_log in 0u32..6,
            cap_sectors in 1u64..12_000,
            lazy in any::<bool>(),
            slots in 1usize..4,
            ops in prop::collection::vec(op(), 1..24),
        ) {
            run_model(gran_log, cap_sectors, lazy, slots, &ops);
        }
    }

    // ---- qemu interop ----

    /// Whether `tool` runs; a missing tool is a visible SKIP, or a failure under
    /// `VCB_REQUIRE_TOOLS`.
    #[allow(clippy::print_stderr)]
    fn require_tool(tool: &str) -> bool {
        match Command::new(tool).arg("--version").output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                eprintln!("using {}", version.lines().next().unwrap_or(tool));
                true
            }
            _ if std::env::var_os("VCB_REQUIRE_TOOLS").is_some() => {
                panic!("{tool} not found and VCB_REQUIRE_TOOLS is set")
            }
            _ => {
                eprintln!("SKIP: {tool} not found");
                false
            }
        }
    }

    /// Run `tool args` in `dir`; on failure dump everything needed to reproduce.
    fn run(dir: &Path, tool: &str, args: &[&str]) -> Output {
        let out = Command::new(tool)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("spawn");
        if !out.status.success() {
            let listing: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| {
                            format!(
                                "{} {}",
                                e.file_name().to_string_lossy(),
                                e.metadata().map(|m| m.len()).unwrap_or(0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "command failed: {tool} {args:?}\ncwd: {}\nfiles: {listing:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    const PARENT_DESCRIPTOR: &str = "# Disk DescriptorFile
version=1
encoding=\"UTF-8\"
CID=aaaaaaaa
parentCID=ffffffff
isNativeSnapshot=\"no\"
createType=\"vmfs\"

# Extent description
RW 16384 VMFS \"p-flat.vmdk\"

# The Disk Data Base
#DDB

ddb.adapterType = \"lsilogic\"
ddb.geometry.cylinders = \"1\"
ddb.geometry.heads = \"255\"
ddb.geometry.sectors = \"63\"
";

    const CHILD_DESCRIPTOR: &str = "# Disk DescriptorFile
version=1
encoding=\"UTF-8\"
CID=bbbbbbbb
parentCID=aaaaaaaa
isNativeSnapshot=\"no\"
createType=\"vmfsSparse\"
parentFileNameHint=\"p.vmdk\"
# Extent description
RW 16384 VMFSSPARSE \"c-delta.vmdk\"

# The Disk Data Base
#DDB

ddb.longContentID = \"0123456789abcdef0123456789abcdef\"
";

    fn qemu_convert(dir: &Path) -> Vec<u8> {
        let _ = std::fs::remove_file(dir.join("out.raw"));
        run(
            dir,
            "qemu-img",
            &["convert", "-f", "vmdk", "-O", "raw", "c.vmdk", "out.raw"],
        );
        std::fs::read(dir.join("out.raw")).expect("read out.raw")
    }

    fn qemu_round_trip(gran: u64) {
        const CAP: u64 = 8 * MIB;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let delta = d.join("c-delta.vmdk");
        let parent = noise(0xfeed + gran, small(CAP));
        std::fs::write(d.join("p-flat.vmdk"), &parent).expect("write parent");
        std::fs::write(d.join("p.vmdk"), PARENT_DESCRIPTOR).expect("write parent descriptor");
        create(&delta, CAP, gran).expect("create");
        std::fs::write(d.join("c.vmdk"), CHILD_DESCRIPTOR).expect("write child descriptor");

        // vcb writes; qemu reads. Stay clear of [0, 8K) and [1M - 8K, 1M + 72K): qemu writes there.
        let mut model = parent.clone();
        let mut ext = CowdExtent::open(&delta, CAP, true).expect("open");
        let mut x = noise(gran, 8 * 40);
        for (i, w) in x.chunks_exact_mut(8).enumerate() {
            let r = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            let len = 1 + r % 70_000;
            let off = (8192 + (r >> 20) % (CAP - 8192 - len)).min(CAP - len);
            if off < MIB + 73_728 && off + len > MIB - 8192 {
                continue;
            }
            let data = noise(r ^ i as u64, small(len));
            ext.write_at(off, &data, &mut VecBacking(&parent))
                .expect("write");
            model[small(off)..small(off + len)].copy_from_slice(&data);
        }
        // One write across the GT 0 / GT 1 boundary at 2 MiB (512-byte grains).
        let data = noise(77, 100_000);
        ext.write_at(2 * MIB - 50_000, &data, &mut VecBacking(&parent))
            .expect("write");
        model[small(2 * MIB - 50_000)..small(2 * MIB + 50_000)].copy_from_slice(&data);
        ext.close().expect("close");
        drop(ext);

        run(d, "qemu-img", &["check", "-f", "vmdk", "c.vmdk"]);
        assert_same("qemu-img convert of vcb's delta", &qemu_convert(d), &model);

        // qemu writes; vcb reads.
        if !require_tool("qemu-io") {
            return;
        }
        run(
            d,
            "qemu-io",
            &["-f", "vmdk", "-c", "write -P 0xab 1M 64k", "c.vmdk"],
        );
        run(
            d,
            "qemu-io",
            &["-f", "vmdk", "-c", "write -P 0xcd 3000 1000", "c.vmdk"],
        );
        model[small(MIB)..small(MIB + 65_536)].fill(0xab);
        model[3000..4000].fill(0xcd);
        let mut ext = CowdExtent::open(&delta, CAP, false).expect("open after qemu");
        assert_same(
            "vcb read of qemu's writes",
            &chain_read(&mut ext, &parent),
            &model,
        );
        drop(ext);
        let report = check(&delta, false).expect("check");
        assert!(
            report.problems.iter().any(|p| p.contains("freeSector")),
            "qemu leaves freeSector stale: {report:?}"
        );
        assert_eq!(report.problems.len(), 1, "{report:?}");

        // vcb writes again after qemu: appends past qemu's grains, both stay intact.
        let mut ext = CowdExtent::open(&delta, CAP, true).expect("open writable after qemu");
        let data = noise(99, 200_000);
        ext.write_at(6 * MIB, &data, &mut VecBacking(&parent))
            .expect("write");
        model[small(6 * MIB)..small(6 * MIB + 200_000)].copy_from_slice(&data);
        ext.close().expect("close");
        drop(ext);
        assert!(check(&delta, false).expect("check").is_clean());
        run(d, "qemu-img", &["check", "-f", "vmdk", "c.vmdk"]);
        assert_same(
            "qemu-img convert after both wrote",
            &qemu_convert(d),
            &model,
        );
    }

    #[test]
    fn qemu_reads_our_delta_and_we_read_qemus_writes() {
        if !require_tool("qemu-img") {
            return;
        }
        for gran in [ESX_GRANULARITY_SECTORS, 8, 128] {
            qemu_round_trip(gran);
        }
    }

    // ---- measurement ----

    /// map() over an empty, large delta: every preallocated GT is read (as a hole).
    /// Run: `cargo test -p vmdk --lib cowd -- --ignored --nocapture measure`.
    #[test]
    #[ignore = "measurement, prints timings"]
    #[allow(clippy::print_stderr)]
    fn measure_map_of_empty_256gib_delta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big-delta.vmdk");
        let cap = 256 << 30;
        create(&path, cap, ESX_GRANULARITY_SECTORS).expect("create");
        let mut ext = CowdExtent::open(&path, cap, false).expect("open");
        let t = std::time::Instant::now();
        assert_eq!(
            ext.map(0, cap).expect("map"),
            (BlockState::Unallocated, cap)
        );
        let map_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        assert!(check(&path, false).expect("check").is_clean());
        eprintln!(
            "check of the same: {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        eprintln!(
            "map of an empty 256 GiB delta (131072 preallocated GTs): {map_ms:.1} ms, file {} MiB logical, {} KiB allocated",
            std::fs::metadata(&path).expect("stat").len() >> 20,
            ext.allocated_file_bytes() >> 10
        );
    }

    /// 64 MiB through map + read_at for several grain sizes and layouts.
    /// Run: `cargo test -p vmdk --lib cowd -- --ignored --nocapture measure`.
    #[test]
    #[ignore = "measurement, prints timings"]
    #[allow(clippy::print_stderr)]
    fn measure_sequential_read_64mib() {
        const CAP: u64 = 64 * MIB;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = noise(5, small(CAP));
        for gran in [1u64, 8, 128] {
            for scattered in [false, true] {
                let path = dir.path().join(format!("b{gran}{scattered}-delta.vmdk"));
                create(&path, CAP, gran).expect("create");
                let mut ext = CowdExtent::open(&path, CAP, true).expect("open");
                let gb = gran * SECTOR;
                let t = std::time::Instant::now();
                if scattered {
                    // One grain per write, last grain first: no two grains adjacent in the file.
                    for g in (0..CAP / gb).rev() {
                        let r = small(g * gb)..small((g + 1) * gb);
                        ext.write_at(g * gb, &data[r], &mut crate::extent::ZeroBacking)
                            .expect("write");
                    }
                } else {
                    for chunk in 0..CAP / MIB {
                        let r = small(chunk * MIB)..small((chunk + 1) * MIB);
                        ext.write_at(chunk * MIB, &data[r], &mut crate::extent::ZeroBacking)
                            .expect("write");
                    }
                }
                ext.close().expect("close");
                let write = t.elapsed();
                drop(ext);
                let mut ext = CowdExtent::open(&path, CAP, false).expect("open");
                let t = std::time::Instant::now();
                let mut buf = vec![0u8; small(MIB)];
                let mut off = 0;
                while off < CAP {
                    let (state, n) = ext.map(off, MIB.min(CAP - off)).expect("map");
                    assert_eq!(state, BlockState::Data);
                    ext.read_at(off, &mut buf[..small(n)]).expect("read");
                    assert!(buf[..small(n)] == data[small(off)..small(off + n)]);
                    off += n;
                }
                let read = t.elapsed();
                eprintln!(
                    "granularity {gran:>3} sectors, {:<10} write {:>7.1} ms, map+read 64 MiB {:>7.1} ms ({:.0} MiB/s), file {} KiB",
                    if scattered { "scattered" } else { "sequential" },
                    write.as_secs_f64() * 1e3,
                    read.as_secs_f64() * 1e3,
                    64.0 / read.as_secs_f64(),
                    std::fs::metadata(&path).expect("stat").len() / 1024
                );
            }
        }
    }
}
