//! Regression tests for what fuzzing the COWD code turned up (issue 2).

use super::tests::*;
use super::*;
use crate::extent::{BlockState, Extent};
use crate::fileio::PathFile;
use crate::magic::SECTOR;

/// Every GD entry points past EOF, so `check` with repair gives each a new empty GT. Those
/// tables lie past EOF and must become holes, not written zeros: a 4 MiB hostile GD (a
/// million entries) made repair write 16 GiB. Here 4096 entries wrote 64 MiB.
#[test]
fn issue_2_fuzz_check_repair_writes_no_zero_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r-delta.vmdk");
    let cap = 4096 * 4096 * SECTOR; // 512-byte grains: 4096 GD entries
    create(&path, cap, ESX_GRANULARITY_SECTORS).expect("create");
    let gd: Vec<u8> = (0..4096u32)
        .flat_map(|_| 0x7fff_0000u32.to_le_bytes())
        .collect();
    PathFile::open(&path, true)
        .expect("open")
        .write_all_at(&gd, 4 * SECTOR)
        .expect("damage the GD");

    let report = check(&path, true).expect("repair");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("3096 more damaged")),
        "1000 listed, the rest counted: {:?}",
        report.problems.last()
    );
    assert!(report.is_clean(), "{report:?}");
    let allocated = PathFile::open(&path, false)
        .expect("open")
        .allocated_bytes();
    assert!(
        allocated < 4 * MIB,
        "repair wrote {allocated} bytes for empty tables"
    );
    assert!(check(&path, false)
        .expect("check again")
        .problems
        .is_empty());
    let mut ext = CowdExtent::open(&path, cap, false).expect("open extent");
    assert_eq!(
        ext.map(0, cap).expect("map"),
        (BlockState::Unallocated, cap)
    );
}
