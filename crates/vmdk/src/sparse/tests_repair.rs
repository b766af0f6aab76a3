//! Unit tests: check / repair, redundant GD fallback, embedded descriptor, create errors.

use super::tests::{disk_header, new_disk, patch, pattern, read_u32_at, GRAIN};
use super::*;
use crate::extent::ZeroBacking;

/// A disk with grains 0..4 written; returns (path, primary GT 0 sector, redundant GT 0 sector).
fn written_disk(dir: &Path, name: &str) -> (PathBuf, u64, u64) {
    let p = new_disk(dir, name, 8 << 20, &CreateSparse::default());
    let mut e = SparseExtent::open(&p, 8 << 20, true).unwrap();
    e.write_at(0, &pattern(1, 4 * GRAIN as usize), &mut ZeroBacking)
        .unwrap();
    e.close().unwrap();
    let h = disk_header(&p);
    let gt = u64::from(read_u32_at(&p, h.gd_offset_sectors * 512));
    let rgt = u64::from(read_u32_at(&p, h.rgd_offset_sectors * 512));
    (p, gt, rgt)
}

#[test]
fn check_clean_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, _) = written_disk(dir.path(), "a.vmdk");
    let r = check(&p, false).unwrap();
    assert!(r.is_clean() && r.problems.is_empty(), "{r:?}");
}

#[test]
fn check_unclean_shutdown_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, _) = written_disk(dir.path(), "u.vmdk");
    patch(&p, 72, &[1]);
    let r = check(&p, false).unwrap();
    assert_eq!(r.problems.len(), 1, "{r:?}");
    assert!(r.problems[0].contains("u.vmdk") && r.problems[0].contains("uncleanShutdown"));
    let r = check(&p, true).unwrap();
    assert!(r.is_clean() && r.repaired.len() == 1, "{r:?}");
    assert!(!disk_header(&p).unclean_shutdown);
    assert!(check(&p, false).unwrap().problems.is_empty());
}

#[test]
fn check_gt_entry_past_eof_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (p, gt, rgt) = written_disk(dir.path(), "e.vmdk");
    for t in [gt, rgt] {
        patch(&p, t * 512 + 4 * 2, &0x0fff_0000u32.to_le_bytes());
    }
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("e.vmdk: GT 0 entry 2 points past EOF")),
        "{r:?}"
    );
    let r = check(&p, true).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(
        r.repaired
            .iter()
            .any(|l| l.contains("GT 0 entry 2") && l.contains("lost")),
        "{r:?}"
    );
    assert!(check(&p, false).unwrap().problems.is_empty());
    let mut e = SparseExtent::open(&p, 8 << 20, false).unwrap();
    assert_eq!(
        e.map(2 * GRAIN, GRAIN).unwrap(),
        (BlockState::Unallocated, GRAIN)
    );
}

#[test]
fn check_redundant_table_disagrees_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, rgt) = written_disk(dir.path(), "d.vmdk");
    patch(&p, rgt * 512 + 4, &[0; 4]);
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("d.vmdk: GT 0") && l.contains("differ")),
        "{r:?}"
    );
    let r = check(&p, true).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert!(check(&p, false).unwrap().problems.is_empty());
}

#[test]
fn primary_gd_unusable_falls_back_to_redundant() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, _) = written_disk(dir.path(), "f.vmdk");
    let h = disk_header(&p);
    patch(&p, h.gd_offset_sectors * 512, &0x7fff_fff0u32.to_le_bytes());
    let mut e = SparseExtent::open(&p, 8 << 20, false).unwrap();
    let mut b = vec![0u8; 4 * GRAIN as usize];
    e.read_at(0, &mut b).unwrap();
    assert!(
        b == pattern(1, 4 * GRAIN as usize),
        "read through the redundant GD"
    );
    let err = SparseExtent::open(&p, 8 << 20, true).err().unwrap();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("f.vmdk"),
        "{err}"
    );
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("GD entry 0 points past EOF")),
        "{r:?}"
    );
    let r = check(&p, true).unwrap();
    assert!(r.repaired.iter().any(|l| l.contains("GT 0")), "{r:?}");
    let r = check(&p, false).unwrap();
    assert!(r.problems.is_empty(), "{r:?}");
    let mut e = SparseExtent::open(&p, 8 << 20, true).unwrap();
    e.read_at(0, &mut b).unwrap();
    assert!(b == pattern(1, 4 * GRAIN as usize));
}

#[test]
fn check_reports_overlapping_grains() {
    let dir = tempfile::tempdir().unwrap();
    let (p, gt, rgt) = written_disk(dir.path(), "o.vmdk");
    let first = read_u32_at(&p, gt * 512);
    for t in [gt, rgt] {
        patch(&p, t * 512 + 4, &(first + 5).to_le_bytes());
    }
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("overlap") && l.contains("GT 0 entry 0")),
        "{r:?}"
    );
}

#[test]
fn embedded_descriptor_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n";
    let opts = CreateSparse {
        embedded_descriptor: Some(text.into()),
        ..Default::default()
    };
    let p = new_disk(dir.path(), "d.vmdk", 1 << 20, &opts);
    assert_eq!(read_embedded_descriptor(&p).unwrap().as_deref(), Some(text));
    write_embedded_descriptor(&p, "short\n").unwrap();
    assert_eq!(
        read_embedded_descriptor(&p).unwrap().as_deref(),
        Some("short\n")
    );
    let err = write_embedded_descriptor(&p, &"x".repeat(10240)).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { .. }) && err.to_string().contains("d.vmdk"),
        "{err}"
    );
    write_embedded_descriptor(&p, &"y".repeat(10239)).unwrap();
    patch(&p, 512, &[0xff, 0xfe]);
    let err = read_embedded_descriptor(&p).unwrap_err();
    assert!(matches!(err, Error::BadDescriptor { .. }), "{err}");
    assert!(is_sparse_file(&p).unwrap());
    assert_eq!(header_capacity_bytes(&p).unwrap(), 1 << 20);

    let piece = new_disk(dir.path(), "d-s001.vmdk", 1 << 20, &CreateSparse::default());
    assert_eq!(read_embedded_descriptor(&piece).unwrap(), None);
    let err = write_embedded_descriptor(&piece, "x").unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let flat = dir.path().join("flat.vmdk");
    std::fs::write(&flat, b"KD").unwrap();
    assert!(!is_sparse_file(&flat).unwrap());
}

#[test]
fn create_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let p = new_disk(dir.path(), "x.vmdk", 1 << 20, &CreateSparse::default());
    assert!(matches!(
        create(&p, 1 << 20, &CreateSparse::default()),
        Err(Error::AlreadyExists { .. })
    ));
    let q = dir.path().join("y.vmdk");
    let bad_grain = CreateSparse {
        grain_sectors: 3,
        ..Default::default()
    };
    assert!(matches!(
        create(&q, 1 << 20, &bad_grain),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        create(&q, 1000, &CreateSparse::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        create(&q, 3 << 40, &CreateSparse::default()),
        Err(Error::InvalidArgument(_))
    ));
    let long = CreateSparse {
        embedded_descriptor: Some("d".repeat(10240)),
        ..Default::default()
    };
    assert!(matches!(
        create(&q, 1 << 20, &long),
        Err(Error::InvalidArgument(_))
    ));
    assert!(!q.exists());
}

#[test]
fn unreadable_primary_gd_is_replaced_by_redundant_on_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _, _) = written_disk(dir.path(), "g.vmdk");
    let mut h = disk_header(&p);
    let rgd = h.rgd_offset_sectors;
    h.gd_offset_sectors = 1 << 30;
    patch(&p, 0, &h.to_bytes());
    let mut e = SparseExtent::open(&p, 8 << 20, false).unwrap();
    let mut b = vec![0u8; 4 * GRAIN as usize];
    e.read_at(0, &mut b).unwrap();
    assert!(b == pattern(1, 4 * GRAIN as usize));
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("g.vmdk: GD at sector") && l.contains("past EOF")),
        "{r:?}"
    );
    let r = check(&p, true).unwrap();
    assert!(
        r.repaired
            .iter()
            .any(|l| l.contains("replaced by the redundant GD")),
        "{r:?}"
    );
    let h = disk_header(&p);
    assert_eq!((h.gd_offset_sectors, h.flags & 2), (rgd, 0));
    assert!(check(&p, false).unwrap().problems.is_empty());
    let mut e = SparseExtent::open(&p, 8 << 20, true).unwrap();
    e.write_at(7 * GRAIN, b"after repair", &mut ZeroBacking)
        .unwrap();
    e.close().unwrap();
    assert!(check(&p, false).unwrap().problems.is_empty());
}

#[test]
fn shared_grains_beyond_file_size_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (p, gt, rgt) = written_disk(dir.path(), "b.vmdk");
    let first = read_u32_at(&p, gt * 512);
    let table: Vec<u8> = std::iter::repeat_n(first.to_le_bytes(), 512)
        .flatten()
        .collect();
    for t in [gt, rgt] {
        patch(&p, t * 512, &table);
    }
    let r = check(&p, false).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|l| l.contains("grains overlap (not all listed)")),
        "{r:?}"
    );
    assert!(r.problems.len() < 100, "{}", r.problems.len());
}
