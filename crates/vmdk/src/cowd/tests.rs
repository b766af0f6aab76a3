//! Unit tests of the header and of `create`, plus the helpers the other test files share.

use super::create::fresh_layout;
use super::*;
use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::PathFile;
use crate::magic::SECTOR;
use std::path::Path;

pub(super) const MIB: u64 = 1 << 20;

/// Parent bytes held in memory.
pub(super) struct VecBacking<'a>(pub(super) &'a [u8]);

impl Backing for VecBacking<'_> {
    fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = small(offset);
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub(super) fn noise(seed: u64, len: usize) -> Vec<u8> {
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
pub(super) fn chain_read(ext: &mut CowdExtent, parent: &[u8]) -> Vec<u8> {
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

pub(super) fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
}

pub(super) fn root_header(num_sectors: u32, gran: u32) -> CowdHeader {
    fresh_layout(
        Path::new("t"),
        u64::from(num_sectors) * SECTOR,
        u64::from(gran),
    )
    .expect("layout")
    .0
}

pub(super) fn patch32(path: &Path, offset: u64, value: u32) {
    let f = PathFile::open(path, true).expect("open");
    f.write_all_at(&value.to_le_bytes(), offset).expect("patch");
}

pub(super) fn read32(path: &Path, offset: u64) -> u32 {
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
        let err =
            CowdHeader::parse(&h.to_bytes(), Path::new("/d/g-delta.vmdk")).expect_err("must fail");
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
    let err = CowdHeader::parse(&h[..100], Path::new("/d/t-delta.vmdk")).expect_err("must fail");
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
