//! Issue 10: shared parents (linked clones) are never written, and disk tools take the
//! VM's lock and refuse parents.

use std::path::{Path, PathBuf};

use host::{Error, Host, LockMode, VmRef, VmSpec};
use sha2::{Digest, Sha256};

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// Every file of a disk (descriptor and extents), hashed.
fn disk_hash(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    vmdk::link_files(path)
        .unwrap()
        .into_iter()
        .map(|f| (f.clone(), sha(&f)))
        .collect()
}

/// A host with a base VM, and a clone whose first disk is a redo log of the base's disk
/// (a linked clone) and whose second disk lies on another datastore.
fn linked_clone() -> (tempfile::TempDir, Host, VmRef, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::init(&dir.path().join("root"), "h").unwrap();
    let ds2 = dir.path().join("ds2");
    std::fs::create_dir(&ds2).unwrap();
    host.add_datastore("ds2", &ds2).unwrap();
    let mut spec = VmSpec::new("base");
    spec.format = vmdk::DiskFormat::Thin;
    spec.disks.push(host::DiskSource::New {
        capacity_bytes: 4 << 20,
    });
    let base = host.create_vm(&spec, &mut ()).unwrap();
    let base_disk = base.disks(&host).unwrap()[0].path.clone();
    let mut d = vmdk::Disk::open(&base_disk, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(0, &[0x5a; 1 << 20]).unwrap();
    d.close().unwrap();

    let clone_dir = host.datastore("datastore1").unwrap().path.join("clone");
    std::fs::create_dir(&clone_dir).unwrap();
    let delta = clone_dir.join("clone.vmdk");
    vmdk::create_child(&base_disk, &delta, vmdk::ChildFormat::VmfsSparse).unwrap();
    let data2 = ds2.join("clone_1.vmdk");
    vmdk::create(
        &data2,
        &vmdk::CreateSpec::new(1 << 20, vmdk::DiskFormat::Thin),
    )
    .unwrap();
    std::fs::write(
        clone_dir.join("clone.vmx"),
        "displayName = \"clone\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"clone.vmdk\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"[ds2] clone_1.vmdk\"\n",
    )
    .unwrap();
    let clone = host
        .register_vm(&"[datastore1] clone/clone.vmx".parse().unwrap(), None, None)
        .unwrap();
    (dir, host, clone.moref, base_disk)
}

#[test]
fn issue_10_linked_clone_snapshots_never_write_the_shared_base() {
    let (_dir, host, clone, base_disk) = linked_clone();
    let before = disk_hash(&base_disk);
    for round in 0..2 {
        let mut locked = host.lock_vm(clone, LockMode::NoWait).unwrap();
        let snap = locked.create_snapshot(&format!("s{round}"), "").unwrap();
        let top = locked.vm().disks(&host).unwrap()[0].path.clone();
        let mut d = vmdk::Disk::open(&top, &locked.disk_options(true)).unwrap();
        d.write_at(4096, b"written in the clone").unwrap();
        d.close().unwrap();
        locked.remove_snapshot(snap.uid, &mut ()).unwrap();
        locked.consolidate(&mut ()).unwrap();
        drop(locked);
        assert_eq!(
            disk_hash(&base_disk),
            before,
            "round {round}: the base changed"
        );
        let vm = host.vm(clone).unwrap();
        let disk0 = &vm.disks(&host).unwrap()[0];
        assert_eq!(
            disk0.file_name, "clone.vmdk",
            "the clone keeps its own redo log"
        );
        let chain = &vm.disk_chains(&host).unwrap()[0].1;
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert_eq!(chain[1], std::fs::canonicalize(&base_disk).unwrap());
    }
    // Reading through the chain sees the base's data and the clone's writes.
    let vm = host.vm(clone).unwrap();
    let top = &vm.disks(&host).unwrap()[0].path;
    let mut d = vmdk::Disk::open(top, &host.confined().disk_options(false)).unwrap();
    let mut buf = vec![0u8; 8192];
    d.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..16], &[0x5a; 16]);
    assert_eq!(&buf[4096..4096 + 20], b"written in the clone");
}

#[test]
fn issue_10_disk_tools_refuse_shared_parents_and_take_the_vm_lock() {
    let (_dir, host, clone, base_disk) = linked_clone();
    // The base is the parent of the clone's disk: no tool may change it.
    let e = host
        .lock_disk(&base_disk, LockMode::NoWait, None)
        .unwrap_err();
    assert!(matches!(e, Error::SharedParent { .. }), "{e}");
    assert!(e.to_string().contains("clone"), "{e}");
    // The clone's own redo log may be committed into it only by naming that child; the
    // base lies in another VM's folder, whose lock is then taken.
    let vm = host.vm(clone).unwrap();
    let top = vm.disks(&host).unwrap()[0].path.clone();
    assert!(host
        .lock_disk(&base_disk, LockMode::NoWait, Some(&top))
        .is_ok());
    // A disk in a registered VM's folder is changed under that VM's lock.
    let held = host.lock_disk(&top, LockMode::NoWait, None).unwrap();
    assert!(held.is_some());
    let e = host.lock_disk(&top, LockMode::NoWait, None).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    drop(held);
    assert!(host.lock_vm(clone, LockMode::NoWait).is_ok());
}
