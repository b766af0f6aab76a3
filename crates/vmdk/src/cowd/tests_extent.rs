//! Unit tests of reading, writing and checking extents, and a model test of random writes.

use super::tables::GtState;
use super::tests::*;
use super::*;
use crate::error::Error;
use crate::extent::{BlockState, Extent};
use proptest::prelude::*;
use std::path::Path;

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
