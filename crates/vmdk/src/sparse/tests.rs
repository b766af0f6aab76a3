//! Unit tests: open errors, reads, writes, copy-on-write, caching, crash flag.

use super::*;
use crate::extent::ZeroBacking;
use crate::magic::KDMV_GD_AT_END;
use proptest::prelude::*;
use std::path::PathBuf;

pub(crate) const GRAIN: u64 = 64 << 10;

/// Parent contents for copy-on-write: a byte pattern.
pub(crate) struct VecBacking(pub(crate) Vec<u8>);

impl Backing for VecBacking {
    fn read_backing(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
}

pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn new_disk(dir: &Path, name: &str, cap: u64, opts: &CreateSparse) -> PathBuf {
    let p = dir.join(name);
    create(&p, cap, opts).unwrap();
    p
}

pub(crate) fn disk_header(path: &Path) -> SparseHeader {
    let b = std::fs::read(path).unwrap();
    SparseHeader::parse(&b[..512], path).unwrap()
}

pub(crate) fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

pub(crate) fn read_u32_at(path: &Path, offset: u64) -> u32 {
    let b = std::fs::read(path).unwrap();
    le_u32(&b, offset as usize)
}

/// What a chain of this extent over `parent` reads (map + read_at + parent fall-through).
pub(crate) fn chain_read(e: &mut SparseExtent, parent: &[u8]) -> Vec<u8> {
    let len = e.len_bytes();
    let mut out = vec![0u8; len as usize];
    let mut pos = 0;
    while pos < len {
        let (state, n) = e.map(pos, len - pos).unwrap();
        assert!(n >= 1);
        let r = pos as usize..(pos + n) as usize;
        match state {
            BlockState::Data => e.read_at(pos, &mut out[r]).unwrap(),
            BlockState::Unallocated => out[r.clone()].copy_from_slice(&parent[r]),
            BlockState::Zero => {}
        }
        pos += n;
    }
    out
}

#[test]
fn create_matches_qemu_layout() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CreateSparse {
        embedded_descriptor: Some("# Disk DescriptorFile\n".into()),
        ..Default::default()
    };
    let p = new_disk(dir.path(), "a.vmdk", 3 << 30, &opts);
    let h = disk_header(&p);
    // Spec §1 example (qemu monolithicSparse, 3 GiB).
    assert_eq!((h.version, h.flags, h.capacity_sectors), (1, 3, 0x60_0000));
    assert_eq!(
        (h.descriptor_offset_sectors, h.descriptor_size_sectors),
        (1, 20)
    );
    assert_eq!(
        (
            h.rgd_offset_sectors,
            h.gd_offset_sectors,
            h.overhead_sectors
        ),
        (21, 406, 896)
    );
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 896 * 512);
    // GD entry 0 points at the first primary GT right after the GD; RGD at the first RGT.
    assert_eq!(read_u32_at(&p, 406 * 512), 406 + 1);
    assert_eq!(read_u32_at(&p, 21 * 512), 21 + 1);
    // Piece without descriptor; zeroed-grain option.
    let opts = CreateSparse {
        zeroed_grain_gtes: true,
        ..Default::default()
    };
    let h = disk_header(&new_disk(dir.path(), "b-s001.vmdk", 2 << 30, &opts));
    assert_eq!(
        (
            h.version,
            h.flags,
            h.descriptor_offset_sectors,
            h.rgd_offset_sectors
        ),
        (2, 7, 0, 1)
    );
}

#[test]
fn open_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.vmdk");
    std::fs::write(&p, b"KDMV\x01\0\0\0").unwrap();
    let e = SparseExtent::open(&p, 512, false).err().unwrap();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("t.vmdk"));
}

#[test]
fn open_bad_header_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "h.vmdk", 1 << 20, &CreateSparse::default());
    patch(&p, 4, &4u32.to_le_bytes());
    let e = SparseExtent::open(&p, 1 << 20, false).err().unwrap();
    assert!(
        matches!(
            e,
            Error::BadHeader {
                field: "version",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("h.vmdk"));
}

#[test]
fn open_gd_past_eof() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "g.vmdk", 1 << 20, &CreateSparse::default());
    let mut h = disk_header(&p);
    h.gd_offset_sectors = 1 << 40;
    h.flags &= !crate::magic::KDMV_FLAG_REDUNDANT_GD;
    patch(&p, 0, &h.to_bytes());
    let e = SparseExtent::open(&p, 1 << 20, false).err().unwrap();
    assert!(
        matches!(
            e,
            Error::Truncated {
                what: "grain directory",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("g.vmdk"));
}

#[test]
fn open_overhead_past_eof() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "o.vmdk", 1 << 20, &CreateSparse::default());
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 512)
        .unwrap();
    let e = SparseExtent::open(&p, 1 << 20, false).err().unwrap();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn gt_entry_past_eof_fails_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "e.vmdk", 1 << 20, &CreateSparse::default());
    let h = disk_header(&p);
    let gt0 = u64::from(read_u32_at(&p, h.gd_offset_sectors * 512));
    patch(&p, gt0 * 512 + 4 * 3, &0x00ff_0000u32.to_le_bytes());
    let mut e = SparseExtent::open(&p, 1 << 20, false).unwrap();
    assert_eq!(e.map(3 * GRAIN, GRAIN).unwrap(), (BlockState::Data, GRAIN));
    let mut b = [0u8; 16];
    let err = e.read_at(3 * GRAIN + 8, &mut b).unwrap_err();
    assert!(
        matches!(
            err,
            Error::GrainPastEof {
                gt: 0,
                index: 3,
                sector: 0xff_0000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("e.vmdk"));
    e.read_at(0, &mut b).unwrap();
}

#[test]
fn stream_header_without_footer_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "s.vmdk", 1 << 20, &CreateSparse::default());
    let mut h = disk_header(&p);
    h.gd_offset_sectors = KDMV_GD_AT_END;
    patch(&p, 0, &h.to_bytes());
    let e = SparseExtent::open(&p, 1 << 20, false).err().unwrap();
    assert!(e.to_string().contains("incomplete stream"), "{e}");
}

#[test]
fn writes_coalesce_and_reads_coalesce() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16u64 << 20;
    let p = new_disk(dir.path(), "c.vmdk", cap, &CreateSparse::default());
    let data = pattern(1, 4 << 20);
    let mut e = SparseExtent::open(&p, cap, true).unwrap();
    e.write_at(GRAIN, &data, &mut ZeroBacking).unwrap();
    assert_eq!(e.io_calls.1, 1, "64 new grains go out in one pwrite");
    // Grain by grain in order: still physically contiguous.
    for i in 0..64u64 {
        let chunk = &data[(i * GRAIN) as usize..((i + 1) * GRAIN) as usize];
        e.write_at((8 << 20) + i * GRAIN, chunk, &mut ZeroBacking)
            .unwrap();
    }
    e.close().unwrap();
    drop(e);
    let mut e = SparseExtent::open(&p, cap, false).unwrap();
    let mut b = vec![0u8; 4 << 20];
    e.read_at(8 << 20, &mut b).unwrap();
    assert_eq!(
        e.io_calls.0, 1,
        "a 4 MiB read of contiguous grains is one pread"
    );
    assert!(b == data);
    e.read_at(GRAIN, &mut b).unwrap();
    assert!(b == data);
    assert_eq!(e.map(0, cap).unwrap(), (BlockState::Unallocated, GRAIN));
    assert_eq!(e.map(GRAIN, cap).unwrap(), (BlockState::Data, 4 << 20));
    assert_eq!(e.map(8 << 20, cap).unwrap(), (BlockState::Data, 4 << 20));
    assert_eq!(
        e.map(12 << 20, cap).unwrap(),
        (BlockState::Unallocated, 4 << 20)
    );
    assert_eq!(e.map(100, 10).unwrap(), (BlockState::Unallocated, 10));
}

#[test]
fn map_runs_cross_grain_tables() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 100u64 << 20;
    let p = new_disk(dir.path(), "m.vmdk", cap, &CreateSparse::default());
    let mut e = SparseExtent::open(&p, cap, true).unwrap();
    // Grains 510..514 straddle GT 0 and GT 1 (written out of order: not contiguous on disk).
    for g in [513u64, 510, 512, 511] {
        e.write_at(g * GRAIN, &pattern(g, GRAIN as usize), &mut ZeroBacking)
            .unwrap();
    }
    assert_eq!(
        e.map(0, cap).unwrap(),
        (BlockState::Unallocated, 510 * GRAIN)
    );
    assert_eq!(
        e.map(510 * GRAIN, cap).unwrap(),
        (BlockState::Data, 4 * GRAIN)
    );
    assert_eq!(
        e.map(514 * GRAIN, cap).unwrap(),
        (BlockState::Unallocated, cap - 514 * GRAIN)
    );
    let mut b = vec![0u8; 4 * GRAIN as usize];
    e.read_at(510 * GRAIN, &mut b).unwrap();
    for (i, g) in (510u64..514).enumerate() {
        assert!(b[i * GRAIN as usize..(i + 1) * GRAIN as usize] == pattern(g, GRAIN as usize)[..]);
    }
    e.close().unwrap();
}

#[test]
fn copy_on_write_uses_backing_and_zero_grains() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1u64 << 20;
    let opts = CreateSparse {
        zeroed_grain_gtes: true,
        ..Default::default()
    };
    let p = new_disk(dir.path(), "z.vmdk", cap, &opts);
    let h = disk_header(&p);
    let gt0 = u64::from(read_u32_at(&p, h.gd_offset_sectors * 512));
    let rgt0 = u64::from(read_u32_at(&p, h.rgd_offset_sectors * 512));
    for t in [gt0, rgt0] {
        patch(&p, t * 512 + 4 * 2, &1u32.to_le_bytes()); // grain 2: zeroed grain
    }
    let parent = pattern(7, cap as usize);
    let mut e = SparseExtent::open(&p, cap, true).unwrap();
    assert_eq!(e.map(2 * GRAIN, cap).unwrap(), (BlockState::Zero, GRAIN));
    let mut backing = VecBacking(parent.clone());
    e.write_at(GRAIN + 100, b"hello", &mut backing).unwrap();
    e.write_at(2 * GRAIN + 100, b"world", &mut backing).unwrap();
    e.close().unwrap();
    let mut e = SparseExtent::open(&p, cap, false).unwrap();
    let mut g = vec![0u8; GRAIN as usize];
    e.read_at(GRAIN, &mut g).unwrap();
    let mut expect = parent[GRAIN as usize..2 * GRAIN as usize].to_vec();
    expect[100..105].copy_from_slice(b"hello");
    assert!(
        g == expect,
        "unallocated grain: copy-on-write from the backing"
    );
    e.read_at(2 * GRAIN, &mut g).unwrap();
    let mut expect = vec![0u8; GRAIN as usize];
    expect[100..105].copy_from_slice(b"world");
    assert!(
        g == expect,
        "zeroed grain: the rest is zero, not the parent's"
    );
}

#[test]
fn unclean_flag_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "u.vmdk", 1 << 20, &CreateSparse::default());
    let mut e = SparseExtent::open(&p, 1 << 20, true).unwrap();
    assert!(!disk_header(&p).unclean_shutdown, "opening does not mark");
    e.write_at(0, b"abc", &mut ZeroBacking).unwrap();
    assert!(disk_header(&p).unclean_shutdown);
    e.close().unwrap();
    assert!(!disk_header(&p).unclean_shutdown);
    drop(e);
    // Drop without close: the data is reachable, the crash signal stays.
    let mut e = SparseExtent::open(&p, 1 << 20, true).unwrap();
    e.write_at(5 * GRAIN, b"xyz", &mut ZeroBacking).unwrap();
    drop(e);
    assert!(disk_header(&p).unclean_shutdown);
    let mut e = SparseExtent::open(&p, 1 << 20, true).unwrap();
    let mut b = [0u8; 3];
    e.read_at(5 * GRAIN, &mut b).unwrap();
    assert_eq!(&b, b"xyz");
    // Opened unclean: close does not certify metadata it did not check.
    e.write_at(0, b"def", &mut ZeroBacking).unwrap();
    e.close().unwrap();
    assert!(disk_header(&p).unclean_shutdown);
}

#[test]
fn refuses_writes_when_read_only_or_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "r.vmdk", 1 << 20, &CreateSparse::default());
    let mut e = SparseExtent::open(&p, 2 << 20, false).unwrap();
    let err = e.write_at(0, b"a", &mut ZeroBacking).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }) && err.to_string().contains("r.vmdk"));
    let mut e = SparseExtent::open(&p, 2 << 20, true).unwrap();
    let err = e
        .write_at((1 << 20) - 1, b"ab", &mut ZeroBacking)
        .unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
    // Past the header capacity but within the descriptor's size: zero.
    assert_eq!(
        e.map(1 << 20, 1 << 20).unwrap(),
        (BlockState::Zero, 1 << 20)
    );
    let mut b = [1u8; 8];
    e.read_at((1 << 20) - 4, &mut b).unwrap();
    assert_eq!(b, [0; 8]);
    let mut h = disk_header(&p);
    h.version = 3;
    patch(&p, 0, &h.to_bytes());
    let mut e = SparseExtent::open(&p, 1 << 20, true).unwrap();
    let err = e.write_at(0, b"a", &mut ZeroBacking).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
}

#[test]
fn small_gt_cache_evicts_dirty_tables_safely() {
    let dir = tempfile::tempdir().unwrap();
    let opts = CreateSparse {
        grain_sectors: 1,
        ..Default::default()
    };
    let cap = 4u64 << 20; // 512-byte grains: 16 grain tables
    let p = new_disk(dir.path(), "l.vmdk", cap, &opts);
    let mut e = SparseExtent::open(&p, cap, true).unwrap();
    e.set_gt_cache_limit(2);
    let data = pattern(3, cap as usize);
    for i in (0..cap / 4096).rev() {
        let r = (i * 4096) as usize..(i * 4096 + 1000) as usize;
        e.write_at(i * 4096, &data[r], &mut ZeroBacking).unwrap();
    }
    let mut model = vec![0u8; cap as usize];
    for i in 0..cap / 4096 {
        let r = (i * 4096) as usize..(i * 4096 + 1000) as usize;
        model[r.clone()].copy_from_slice(&data[r]);
    }
    assert!(chain_read(&mut e, &vec![0; cap as usize]) == model);
    e.close().unwrap();
    let mut e = SparseExtent::open(&p, cap, false).unwrap();
    assert!(chain_read(&mut e, &vec![0; cap as usize]) == model);
    assert!(check(&p, false).unwrap().problems.is_empty());
}

#[test]
fn gd_entry_zero_allocates_new_grain_table() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 64u64 << 20;
    let p = new_disk(dir.path(), "n.vmdk", cap, &CreateSparse::default());
    let h = disk_header(&p);
    patch(&p, h.gd_offset_sectors * 512 + 4, &[0; 4]);
    patch(&p, h.rgd_offset_sectors * 512 + 4, &[0; 4]);
    let mut e = SparseExtent::open(&p, cap, true).unwrap();
    assert_eq!(
        e.map(32 << 20, cap).unwrap(),
        (BlockState::Unallocated, 32 << 20)
    );
    let data = pattern(9, 100_000);
    e.write_at((32 << 20) + 5, &data, &mut ZeroBacking).unwrap();
    e.close().unwrap();
    let gt1 = read_u32_at(&p, h.gd_offset_sectors * 512 + 4);
    assert!(
        u64::from(gt1) >= h.overhead_sectors,
        "new GT appended at EOF"
    );
    let mut e = SparseExtent::open(&p, cap, false).unwrap();
    let mut b = vec![0u8; data.len()];
    e.read_at((32 << 20) + 5, &mut b).unwrap();
    assert!(b == data);
    let report = check(&p, false).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[derive(Debug, Clone)]
struct Op {
    offset: u64,
    len: usize,
    seed: u64,
}

fn ops(cap: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = (0..cap, 1usize..200_000, any::<u64>()).prop_map(move |(offset, len, seed)| {
        let len = len.min((cap - offset) as usize);
        Op { offset, len, seed }
    });
    prop::collection::vec(op, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_writes_read_back(grain_pow in 3u32..8, ops in ops((5 << 20) + 3584)) {
        let cap = (5u64 << 20) + 3584; // partial last grain
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateSparse { grain_sectors: 1 << grain_pow, ..Default::default() };
        let p = new_disk(dir.path(), "p.vmdk", cap, &opts);
        let parent = pattern(42, cap as usize);
        let mut model = parent.clone();
        let mut e = SparseExtent::open(&p, cap, true).unwrap();
        for op in &ops {
            let data = pattern(op.seed, op.len);
            e.write_at(op.offset, &data, &mut VecBacking(parent.clone())).unwrap();
            model[op.offset as usize..op.offset as usize + op.len].copy_from_slice(&data);
        }
        prop_assert!(chain_read(&mut e, &parent) == model);
        e.close().unwrap();
        drop(e);
        let mut e = SparseExtent::open(&p, cap, false).unwrap();
        prop_assert!(chain_read(&mut e, &parent) == model);
        let report = check(&p, false).unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report);
    }
}
