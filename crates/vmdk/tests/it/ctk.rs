//! Change tracking of writes through the library, and what invalidates it.

use crate::util::{run, tempdir};
use std::process::Command;
use vmdk::ctk::{self, Status};
use vmdk::{CreateSpec, Disk, DiskFormat, OpenOptions};

const MIB: u64 = 1 << 20;

fn valid(disk: &std::path::Path) -> ctk::Tracking {
    match ctk::status(disk).unwrap() {
        Status::Valid(t) => t,
        other => panic!("expected valid tracking, got {other:?}"),
    }
}

fn write(disk: &std::path::Path, offset: u64, len: usize) {
    let mut d = Disk::open(disk, &OpenOptions::writable()).unwrap();
    d.write_at(offset, &vec![0xa5; len]).unwrap();
    d.close().unwrap();
}

#[test]
fn library_writes_are_tracked_and_untracked_writers_invalidate() {
    let dir = tempdir();
    let disk = dir.path().join("vm.vmdk");
    vmdk::create(&disk, &CreateSpec::new(64 * MIB, DiskFormat::Thin)).unwrap();
    assert!(matches!(ctk::status(&disk).unwrap(), Status::Untracked));
    let mut t = ctk::start(&disk).unwrap();
    let since = t.checkpoint();
    t.save(&ctk::ctk_path(&disk)).unwrap();

    write(&disk, 3 * MIB + 100, 5000);
    write(&disk, 40 * MIB, 1);
    let t = valid(&disk);
    assert_eq!(
        t.changed_since(&since).unwrap(),
        vec![(3 * MIB, 64 * 1024), (40 * MIB, 64 * 1024)]
    );

    // A writer killed before it recorded its writes leaves the tracking invalid.
    let mut d = Disk::open(&disk, &OpenOptions::writable()).unwrap();
    d.write_at(0, &[1; 512]).unwrap();
    drop(d);
    match ctk::status(&disk).unwrap() {
        Status::Invalid(why) => assert!(why.contains("never recorded"), "{why}"),
        other => panic!("{other:?}"),
    }

    // A tool that does not track (QEMU's own vmdk driver) gives the disk a new CID.
    ctk::start(&disk).unwrap();
    run(Command::new("qemu-io")
        .args(["-f", "vmdk", "-c", "write -P 7 0 4k"])
        .arg(&disk));
    match ctk::status(&disk).unwrap() {
        Status::Invalid(why) => assert!(why.contains("without tracking"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn commit_into_a_parent_is_not_recorded_in_the_childs_tracking() {
    let dir = tempdir();
    let base = dir.path().join("vm.vmdk");
    let child = dir.path().join("vm-000001.vmdk");
    vmdk::create(&base, &CreateSpec::new(16 * MIB, DiskFormat::Thin)).unwrap();
    vmdk::create_child(&base, &child, vmdk::ChildFormat::VmfsSparse).unwrap();
    let mut t = ctk::start(&child).unwrap();
    let since = t.checkpoint();
    t.save(&ctk::ctk_path(&child)).unwrap();
    write(&child, MIB, 10);
    assert_eq!(
        valid(&child).changed_since(&since).unwrap(),
        vec![(MIB, 64 * 1024)]
    );
    // The base has no tracking file: committing into it writes nothing there.
    vmdk::commit(&child, None, &OpenOptions::default(), &mut ()).unwrap();
    assert!(matches!(ctk::status(&base).unwrap(), Status::Untracked));
}
