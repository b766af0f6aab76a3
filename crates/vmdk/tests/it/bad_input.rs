//! Hostile and broken inputs: a typed error naming the file, never a panic.

use crate::util::*;
use std::path::Path;
use vmdk::{CreateSpec, Disk, DiskFormat, Error, OpenOptions};

fn open_err(path: &Path) -> Error {
    match Disk::open(path, &OpenOptions::read_only()) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e,
    }
}

fn sparse_disk(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("s.vmdk");
    vmdk::create(&p, &CreateSpec::new(4 << 20, DiskFormat::MonoSparse)).unwrap();
    let mut d = Disk::open(&p, &OpenOptions::writable()).unwrap();
    d.write_at(0, &[0x42; 200_000]).unwrap();
    d.close().unwrap();
    p
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn truncated_sparse_file() {
    let dir = tempdir();
    let p = sparse_disk(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(300)
        .unwrap();
    let e = open_err(&p);
    assert!(e.to_string().contains("s.vmdk"), "{e}");
    eprintln!("truncated: {e}");
}

#[test]
fn absurd_capacity_and_grain_size() {
    let dir = tempdir();
    let p = sparse_disk(dir.path());
    patch(&p, 12, &u64::MAX.to_le_bytes());
    let e = open_err(&p);
    assert!(e.to_string().contains("s.vmdk"), "{e}");
    eprintln!("capacity: {e}");
    let p2 = dir.path().join("g.vmdk");
    vmdk::create(&p2, &CreateSpec::new(4 << 20, DiskFormat::MonoSparse)).unwrap();
    patch(&p2, 20, &(1u64 << 40).to_le_bytes());
    let e = open_err(&p2);
    assert!(
        matches!(e, Error::BadHeader { .. } | Error::BadDescriptor { .. }),
        "{e}"
    );
    eprintln!("grain: {e}");
}

#[test]
fn grain_table_entry_past_eof() {
    let dir = tempdir();
    let p = sparse_disk(dir.path());
    // Find the primary GD, then its first GT, and point entry 0 far past EOF.
    let hdr = std::fs::read(&p).unwrap();
    let gd = u64::from_le_bytes(hdr[56..64].try_into().unwrap()) * 512;
    let gt = u64::from(u32::from_le_bytes(
        hdr[gd as usize..gd as usize + 4].try_into().unwrap(),
    )) * 512;
    patch(&p, gt, &0x0fff_ffffu32.to_le_bytes());
    // Also the redundant table, so no fallback hides the damage.
    let rgd = u64::from_le_bytes(hdr[48..56].try_into().unwrap()) * 512;
    let rgt = u64::from(u32::from_le_bytes(
        hdr[rgd as usize..rgd as usize + 4].try_into().unwrap(),
    )) * 512;
    patch(&p, rgt, &0x0fff_ffffu32.to_le_bytes());
    let res = Disk::open(&p, &OpenOptions::read_only()).and_then(|mut d| {
        let mut buf = vec![0u8; 65536];
        d.read_at(0, &mut buf)
    });
    let e = res.expect_err("GT past EOF must fail");
    assert!(matches!(e, Error::GrainPastEof { .. }), "{e}");
    assert!(e.to_string().contains("past EOF"), "{e}");
    let report = vmdk::check(&p, false, &OpenOptions::read_only()).unwrap();
    assert!(
        !report.problems.is_empty(),
        "check must report the bad entry"
    );
    let report = vmdk::check(&p, true, &OpenOptions::read_only()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let report = vmdk::check(&p, false, &OpenOptions::read_only()).unwrap();
    assert!(report.problems.is_empty(), "after repair: {report:?}");
}

fn descriptor_disk(dir: &Path, extent_name: &str) -> std::path::PathBuf {
    let p = dir.join("d.vmdk");
    std::fs::write(
        &p,
        format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{extent_name}\" 0\n"),
    )
    .unwrap();
    p
}

#[test]
fn extent_paths_outside_the_folder_are_refused() {
    let dir = tempdir();
    for name in ["../../etc/passwd", "/etc/passwd", "sub/../../x-flat.vmdk"] {
        let p = descriptor_disk(dir.path(), name);
        let e = open_err(&p);
        assert!(matches!(e, Error::PathOutsideFolder { .. }), "{name}: {e}");
        assert!(e.to_string().contains("outside the disk's folder"), "{e}");
    }
    // Allowed when the caller says so.
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("x-flat.vmdk"), vec![0u8; 2048 * 512]).unwrap();
    let inner = dir.path().join("vm");
    std::fs::create_dir(&inner).unwrap();
    let p = descriptor_disk(&inner, "../elsewhere/x-flat.vmdk");
    let anywhere = OpenOptions::read_only().confined(vmdk::Confinement::Anywhere);
    assert!(Disk::open(&p, &anywhere).is_ok());
}

#[test]
fn non_utf8_descriptor() {
    let dir = tempdir();
    let p = descriptor_disk(dir.path(), "x-flat.vmdk");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[30] = 0xfe;
    std::fs::write(&p, bytes).unwrap();
    let e = open_err(&p);
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
}

#[test]
fn garbage_is_not_a_vmdk() {
    let dir = tempdir();
    let p = write_file(dir.path(), "junk.vmdk", &[0x99; 4096]);
    let e = open_err(&p);
    assert!(matches!(e, Error::NotVmdk { .. }), "{e}");
    let p = write_file(dir.path(), "empty.vmdk", &[]);
    assert!(Disk::open(&p, &OpenOptions::read_only()).is_err());
}

#[test]
fn chain_errors_name_the_files() {
    let dir = tempdir();
    let base = dir.path().join("b.vmdk");
    vmdk::create(&base, &CreateSpec::new(1 << 20, DiskFormat::Thin)).unwrap();
    let child = dir.path().join("b-000001.vmdk");
    vmdk::create_child(&base, &child, vmdk::ChildFormat::VmfsSparse).unwrap();
    // Parent modified behind the child's back: its CID changes on write.
    let mut d = Disk::open(&base, &OpenOptions::writable()).unwrap();
    d.write_at(0, b"changed").unwrap();
    d.close().unwrap();
    let e = open_err(&child);
    assert!(matches!(e, Error::ParentCidMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("b-000001.vmdk") && e.to_string().contains("modified"),
        "{e}"
    );
    // Missing parent.
    let (mut desc, store) = vmdk::read_descriptor(&child).unwrap();
    desc.parent_file_name_hint = Some("gone.vmdk".into());
    vmdk::write_descriptor(&child, store, &desc).unwrap();
    let e = open_err(&child);
    assert!(matches!(e, Error::MissingParent { .. }), "{e}");
    // A loop: the child names itself.
    desc.parent_file_name_hint = Some("b-000001.vmdk".into());
    vmdk::write_descriptor(&child, store, &desc).unwrap();
    let e = open_err(&child);
    assert!(
        matches!(e, Error::ChainLoop { .. } | Error::ParentCidMismatch { .. }),
        "{e}"
    );
    // Capacity mismatch.
    let other = dir.path().join("o.vmdk");
    vmdk::create(&other, &CreateSpec::new(2 << 20, DiskFormat::Thin)).unwrap();
    let (od, _) = vmdk::read_descriptor(&other).unwrap();
    desc.parent_file_name_hint = Some("o.vmdk".into());
    desc.parent_cid = od.cid;
    vmdk::write_descriptor(&child, store, &desc).unwrap();
    let e = open_err(&child);
    assert!(matches!(e, Error::CapacityMismatch { .. }), "{e}");
}

#[test]
fn parents_are_never_written_and_children_see_their_snapshot() {
    let dir = tempdir();
    let base = dir.path().join("p.vmdk");
    vmdk::create(&base, &CreateSpec::new(1 << 20, DiskFormat::MonoSparse)).unwrap();
    let child = dir.path().join("p-000001.vmdk");
    vmdk::create_child(&base, &child, vmdk::ChildFormat::HostedSparse).unwrap();
    let before = std::fs::read(&base).unwrap();
    let mut d = Disk::open(&child, &OpenOptions::writable()).unwrap();
    d.write_at(100, b"only in the child").unwrap();
    d.close().unwrap();
    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "parent bytes unchanged"
    );
}

#[test]
fn out_of_range_access() {
    let dir = tempdir();
    let p = dir.path().join("r.vmdk");
    vmdk::create(&p, &CreateSpec::new(1 << 20, DiskFormat::Thin)).unwrap();
    let mut d = Disk::open(&p, &OpenOptions::writable()).unwrap();
    let e = d.write_at((1 << 20) - 1, b"xx").unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    let e = d.read_at(u64::MAX - 1, &mut [0u8; 4]).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
}

#[test]
fn unclean_shutdown_is_detected_and_repaired() {
    let dir = tempdir();
    let p = dir.path().join("u.vmdk");
    vmdk::create(&p, &CreateSpec::new(1 << 20, DiskFormat::MonoSparse)).unwrap();
    {
        let mut d = Disk::open(&p, &OpenOptions::writable()).unwrap();
        d.write_at(0, &[1u8; 4096]).unwrap();
        d.flush().unwrap();
        // Dropped without close: as if the process were killed.
    }
    let report = vmdk::check(&p, false, &OpenOptions::read_only()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|s| s.contains("uncleanShutdown") || s.contains("unclean")),
        "{report:?}"
    );
    let report = vmdk::check(&p, true, &OpenOptions::read_only()).unwrap();
    assert!(report.is_clean());
    assert!(vmdk::check(&p, false, &OpenOptions::read_only())
        .unwrap()
        .problems
        .is_empty());
    let mut buf = [0u8; 4096];
    Disk::open(&p, &OpenOptions::read_only())
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(buf, [1u8; 4096]);
}
