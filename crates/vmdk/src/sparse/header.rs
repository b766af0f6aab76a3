//! The 512-byte hosted sparse extent header: parse, validate, serialise.
//!
//! The byte table lives in the parent module's documentation ([`crate::sparse`]); every row
//! there is one field of [`SparseHeader`], read here field by field (the on-disk struct is
//! packed and its 64-bit fields are unaligned).

use crate::error::{Error, Result};
use crate::magic::{
    KDMV_FLAG_COMPRESSED, KDMV_FLAG_MARKERS, KDMV_FLAG_NEWLINE_VALID, KDMV_FLAG_REDUNDANT_GD,
    KDMV_FLAG_ZEROED_GTE, KDMV_GD_AT_END, KDMV_GTES_PER_GT, KDMV_MAGIC, KDMV_NEWLINE_TEST,
    MAX_CAPACITY_BYTES, SECTOR,
};
use std::path::Path;

/// Size of the header (and of the footer copy of it in stream files), bytes.
pub(crate) const HEADER_BYTES: usize = 512;
/// Largest grain accepted, sectors (1 MiB). Everyone writes 128; qemu refuses above 1 GiB.
pub(crate) const MAX_GRAIN_SECTORS: u64 = 2048;
/// Largest grain directory accepted, entries (32 MiB of memory). With 64 KiB grains this
/// covers 256 TiB, far above [`MAX_CAPACITY_BYTES`].
pub(crate) const MAX_GD_ENTRIES: u64 = 1 << 23;
/// Size of one grain table in bytes (512 × u32).
pub(crate) const GT_BYTES: u64 = KDMV_GTES_PER_GT * 4;
/// Size of one grain table in sectors.
pub(crate) const GT_SECTORS: u64 = GT_BYTES / SECTOR;
/// Compression algorithm value meaning deflate in a zlib (RFC 1950) wrapper.
pub(crate) const COMPRESSION_DEFLATE: u16 = 1;
/// Flags in the incompatible (high 16 bit) half that this implementation understands.
const KNOWN_INCOMPAT_FLAGS: u32 = KDMV_FLAG_COMPRESSED | KDMV_FLAG_MARKERS;

/// A parsed hosted sparse extent header ("KDMV"). All offsets and sizes are in 512-byte
/// sectors, as on disk. The magic is implied (parsing refuses anything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (offset 4): 1, 2 (zeroed-grain GTEs) or 3 (streamOptimized / CBT).
    pub version: u32,
    /// Flag bits (offset 8); see `magic::KDMV_FLAG_*`.
    pub flags: u32,
    /// Virtual size of the extent (offset 12), sectors.
    pub capacity_sectors: u64,
    /// Grain size (offset 20), sectors; a power of two.
    pub grain_sectors: u64,
    /// Embedded descriptor start (offset 28), sectors; 0 when there is none.
    pub descriptor_offset_sectors: u64,
    /// Embedded descriptor space (offset 36), sectors.
    pub descriptor_size_sectors: u64,
    /// Entries per grain table (offset 44); always 512.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory (offset 48), sectors; used when flag 0x2 is set.
    pub rgd_offset_sectors: u64,
    /// Grain directory (offset 56), sectors; `magic::KDMV_GD_AT_END` in stream headers.
    pub gd_offset_sectors: u64,
    /// Metadata sectors before the first grain (offset 64).
    pub overhead_sectors: u64,
    /// Set while the extent is open for writing (offset 72).
    pub unclean_shutdown: bool,
    /// Newline-detection bytes (offset 73), normally `0A 20 0D 0A`.
    pub newline_test: [u8; 4],
    /// 0 none, 1 deflate (offset 77).
    pub compress_algorithm: u16,
}

fn le_u16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Parse and validate the first 512 bytes of `bytes` (a KDMV header or footer copy).
    /// `path` only names the file in errors.
    ///
    /// # Errors
    /// [`Error::Truncated`] when fewer than 512 bytes are given; [`Error::BadHeader`] for a
    /// wrong magic, version outside 1..=3, an unknown incompatible flag, a grain size that is
    /// not a power of two in 1..=2048 sectors, `numGTEsPerGT` other than 512, a capacity above
    /// `magic::MAX_CAPACITY_BYTES`, a grain directory above 2^23 entries, an unknown
    /// compression algorithm or damaged newline-test bytes.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<SparseHeader> {
        if bytes.len() < HEADER_BYTES {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                what: "sparse extent header",
                offset: 0,
                file_len: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            });
        }
        if bytes[0..4] != KDMV_MAGIC {
            return Err(bad(
                path,
                "magic",
                u64::from(le_u32(bytes, 0)),
                "not \"KDMV\"",
            ));
        }
        let mut newline_test = [0u8; 4];
        newline_test.copy_from_slice(&bytes[73..77]);
        let h = SparseHeader {
            version: le_u32(bytes, 4),
            flags: le_u32(bytes, 8),
            capacity_sectors: le_u64(bytes, 12),
            grain_sectors: le_u64(bytes, 20),
            descriptor_offset_sectors: le_u64(bytes, 28),
            descriptor_size_sectors: le_u64(bytes, 36),
            num_gtes_per_gt: le_u32(bytes, 44),
            rgd_offset_sectors: le_u64(bytes, 48),
            gd_offset_sectors: le_u64(bytes, 56),
            overhead_sectors: le_u64(bytes, 64),
            unclean_shutdown: bytes[72] != 0,
            newline_test,
            compress_algorithm: le_u16(bytes, 77),
        };
        h.validate(path)?;
        Ok(h)
    }

    /// Serialise to the 512-byte on-disk form (magic included, padding zero).
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&KDMV_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset_sectors.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size_sectors.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset_sectors.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset_sectors.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead_sectors.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73..77].copy_from_slice(&self.newline_test);
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// Check the fields that do not depend on the file's length.
    fn validate(&self, path: &Path) -> Result<()> {
        if !(1..=3).contains(&self.version) {
            return Err(bad(
                path,
                "version",
                self.version.into(),
                "only versions 1 to 3 exist",
            ));
        }
        let unknown = self.flags & 0xffff_0000 & !KNOWN_INCOMPAT_FLAGS;
        if unknown != 0 {
            return Err(bad(
                path,
                "flags",
                self.flags.into(),
                "unknown incompatible flag",
            ));
        }
        if self.flags & KDMV_FLAG_NEWLINE_VALID != 0 && self.newline_test != KDMV_NEWLINE_TEST {
            let v = u64::from(u32::from_le_bytes(self.newline_test));
            return Err(bad(
                path,
                "newline test",
                v,
                "damaged (file copied in text mode?)",
            ));
        }
        let g = self.grain_sectors;
        if g == 0 || !g.is_power_of_two() {
            return Err(bad(path, "grainSize", g, "not a power of two"));
        }
        if g > MAX_GRAIN_SECTORS {
            return Err(bad(path, "grainSize", g, "absurd grain size"));
        }
        if u64::from(self.num_gtes_per_gt) != KDMV_GTES_PER_GT {
            return Err(bad(
                path,
                "numGTEsPerGT",
                self.num_gtes_per_gt.into(),
                "must be 512",
            ));
        }
        if self.capacity_sectors > MAX_CAPACITY_BYTES / SECTOR {
            return Err(bad(
                path,
                "capacity",
                self.capacity_sectors,
                "absurd capacity",
            ));
        }
        if self.gd_entries() > MAX_GD_ENTRIES {
            return Err(bad(
                path,
                "capacity",
                self.capacity_sectors,
                "grain directory too large",
            ));
        }
        if self.compress_algorithm > COMPRESSION_DEFLATE {
            let v = self.compress_algorithm.into();
            return Err(bad(path, "compressAlgorithm", v, "unknown compression"));
        }
        Ok(())
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR)
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors.saturating_mul(SECTOR)
    }

    /// Number of grain directory entries: ceil(capacity / (512 × grainSize)).
    pub fn gd_entries(&self) -> u64 {
        let per_gt = self.grain_sectors.saturating_mul(KDMV_GTES_PER_GT).max(1);
        self.capacity_sectors.div_ceil(per_gt)
    }

    /// Whether grains are deflate-compressed (streamOptimized).
    pub fn is_compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE || self.flags & KDMV_FLAG_COMPRESSED != 0
    }

    /// Whether compressed grains are preceded by markers.
    pub fn has_markers(&self) -> bool {
        self.flags & KDMV_FLAG_MARKERS != 0
    }

    /// Whether GTE value 1 means "zeroed grain".
    pub fn zeroed_gte(&self) -> bool {
        self.flags & KDMV_FLAG_ZEROED_GTE != 0
    }

    /// Whether a redundant grain directory is maintained (flag 0x2 and a non-zero offset).
    pub fn has_redundant_gd(&self) -> bool {
        self.flags & KDMV_FLAG_REDUNDANT_GD != 0 && self.rgd_offset_sectors != 0
    }

    /// Whether the grain directory must be found through the footer (stream files).
    pub fn gd_at_end(&self) -> bool {
        self.gd_offset_sectors == KDMV_GD_AT_END
    }
}

pub(crate) fn bad(path: &Path, field: &'static str, value: u64, reason: &'static str) -> Error {
    Error::BadHeader {
        path: path.to_path_buf(),
        field,
        value,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magic::KDMV_NEWLINE_TEST;

    fn sample() -> SparseHeader {
        // qemu monolithicSparse, 3 GiB (spec §1 example).
        SparseHeader {
            version: 1,
            flags: 3,
            capacity_sectors: 0x60_0000,
            grain_sectors: 128,
            descriptor_offset_sectors: 1,
            descriptor_size_sectors: 20,
            num_gtes_per_gt: 512,
            rgd_offset_sectors: 21,
            gd_offset_sectors: 406,
            overhead_sectors: 896,
            unclean_shutdown: false,
            newline_test: KDMV_NEWLINE_TEST,
            compress_algorithm: 0,
        }
    }

    fn p() -> &'static Path {
        Path::new("/x/disk.vmdk")
    }

    #[test]
    fn spec_example_bytes() {
        let b = sample().to_bytes();
        let expect: [u8; 80] = [
            0x4b, 0x44, 0x4d, 0x56, 0x01, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0x60, 0, //
            0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, //
            0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, //
            0x15, 0, 0, 0, 0, 0, 0, 0, 0x96, 0x01, 0, 0, 0, 0, 0, 0, //
            0x80, 0x03, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x20, 0x0d, 0x0a, 0, 0, 0,
        ];
        assert_eq!(&b[..80], &expect[..]);
        assert!(b[80..].iter().all(|&x| x == 0));
    }

    #[test]
    fn round_trip() {
        let mut h = sample();
        h.unclean_shutdown = true;
        h.version = 3;
        h.flags = 0x30001;
        h.compress_algorithm = 1;
        h.gd_offset_sectors = KDMV_GD_AT_END;
        let b = h.to_bytes();
        let back = SparseHeader::parse(&b, p()).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.to_bytes(), b);
        assert!(back.gd_at_end() && back.is_compressed() && back.has_markers());
        assert_eq!(sample().gd_entries(), 96);
    }

    fn expect_bad(mut f: impl FnMut(&mut [u8; 512]), field: &str) {
        let mut b = sample().to_bytes();
        f(&mut b);
        let e = SparseHeader::parse(&b, p()).unwrap_err();
        assert!(
            matches!(&e, Error::BadHeader { field: got, .. } if *got == field),
            "{e}"
        );
        assert!(e.to_string().contains("/x/disk.vmdk"), "{e}");
    }

    #[test]
    fn bad_magic() {
        expect_bad(|b| b[0] = b'k', "magic");
    }

    #[test]
    fn bad_version() {
        expect_bad(|b| b[4] = 4, "version");
        expect_bad(|b| b[4] = 0, "version");
    }

    #[test]
    fn unknown_incompatible_flag() {
        expect_bad(|b| b[10] = 0x04, "flags");
        // Unknown compatible bits are tolerated.
        let mut b = sample().to_bytes();
        b[9] = 0x80;
        SparseHeader::parse(&b, p()).unwrap();
    }

    #[test]
    fn grain_size_not_power_of_two() {
        expect_bad(|b| b[20] = 3, "grainSize");
        expect_bad(|b| b[20] = 0, "grainSize");
    }

    #[test]
    fn grain_size_absurd() {
        let mut b = sample().to_bytes();
        b[20..28].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let e = SparseHeader::parse(&b, p()).unwrap_err();
        assert!(matches!(
            e,
            Error::BadHeader {
                field: "grainSize",
                ..
            }
        ));
        assert!(e.to_string().contains("absurd grain size") && e.to_string().contains("disk.vmdk"));
    }

    #[test]
    fn gtes_per_gt_1024() {
        expect_bad(
            |b| b[44..48].copy_from_slice(&1024u32.to_le_bytes()),
            "numGTEsPerGT",
        );
    }

    #[test]
    fn capacity_absurd() {
        expect_bad(
            |b| b[12..20].copy_from_slice(&u64::MAX.to_le_bytes()),
            "capacity",
        );
        // Within the capacity limit but with 1-sector grains the GD would be 256M entries.
        expect_bad(
            |b| {
                b[12..20].copy_from_slice(&(1u64 << 36).to_le_bytes());
                b[20..28].copy_from_slice(&1u64.to_le_bytes());
            },
            "capacity",
        );
    }

    #[test]
    fn compression_unknown() {
        expect_bad(|b| b[77] = 2, "compressAlgorithm");
    }

    #[test]
    fn newline_damaged() {
        expect_bad(|b| b[75] = 0x0a, "newline test");
    }

    #[test]
    fn truncated_header() {
        let b = sample().to_bytes();
        let e = SparseHeader::parse(&b[..100], p()).unwrap_err();
        assert!(matches!(e, Error::Truncated { file_len: 100, .. }));
        assert!(e.to_string().contains("/x/disk.vmdk"));
    }
}
