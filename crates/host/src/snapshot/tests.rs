use super::*;
use crate::{DiskSource, LockMode, VmSpec};

const MIB: u64 = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    host: Host,
    vm: VmRef,
}

fn setup(disks: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::init(&dir.path().join("root"), "esx1").unwrap();
    let mut spec = VmSpec::new("vm37");
    spec.format = vmdk::DiskFormat::Thin;
    spec.disks = (0..disks)
        .map(|_| DiskSource::New {
            capacity_bytes: MIB,
        })
        .collect();
    let vm = host.create_vm(&spec, &mut ()).unwrap().moref;
    Fixture {
        _dir: dir,
        host,
        vm,
    }
}

impl Fixture {
    fn vm(&self) -> Vm {
        self.host.vm(self.vm).unwrap()
    }

    fn lock(&self) -> LockedVm<'_> {
        self.host.lock_vm(self.vm, LockMode::NoWait).unwrap()
    }

    /// Writes `byte` over `[offset, offset + len)` of disk `i` as the VM sees it.
    fn write(&self, i: usize, offset: u64, len: usize, byte: u8) {
        let path = self.vm().disks(&self.host).unwrap()[i].path.clone();
        let mut d = vmdk::Disk::open(&path, &vmdk::OpenOptions::writable()).unwrap();
        d.write_at(offset, &vec![byte; len]).unwrap();
        d.close().unwrap();
    }

    fn current(&self, i: usize) -> Vec<u8> {
        read_all(&self.vm().disks(&self.host).unwrap()[i].path)
    }

    /// What snapshot `uid` preserved of its first disk.
    fn state(&self, uid: u64) -> Vec<u8> {
        let vm = self.vm();
        let db = read_vmsd(&vm.vmsd_path()).unwrap();
        let (_, name) = &db.get(uid).unwrap().disks[0];
        read_all(&vm.resolve_name(&self.host, name).unwrap())
    }

    fn vmdk_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.vm().dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".vmdk"))
            .collect();
        v.sort();
        v
    }

    fn chain(&self) -> Vec<String> {
        let locked = self.lock();
        let (_, links) = locked.chains().unwrap().remove(0);
        links
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut d = vmdk::Disk::open(path, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; usize::try_from(d.capacity()).unwrap()];
    d.read_at(0, &mut buf).unwrap();
    buf
}

/// A 1 MiB image with `byte` over `[offset, offset + len)` on top of `base`.
fn with(base: &[u8], offset: usize, len: usize, byte: u8) -> Vec<u8> {
    let mut v = base.to_vec();
    v[offset..offset + len].fill(byte);
    v
}

#[test]
fn three_snapshots_remove_middle_revert_and_remove_rest() {
    let f = setup(1);
    f.write(0, 0, MIB as usize, b'A');
    let a = with(&[0; MIB as usize], 0, MIB as usize, b'A');
    let s1 = f.lock().create_snapshot("s1", "first").unwrap();
    assert_eq!(s1.disks[0].redo.file_name().unwrap(), "vm37-000001.vmdk");
    f.write(0, 0, 65536, b'B');
    let ab = with(&a, 0, 65536, b'B');
    let s2 = f.lock().create_snapshot("s2", "").unwrap().uid;
    f.write(0, 65536, 65536, b'C');
    let abc = with(&ab, 65536, 65536, b'C');
    let s3 = f.lock().create_snapshot("s3", "").unwrap().uid;
    f.write(0, 0, 4096, b'D');
    let abcd = with(&abc, 0, 4096, b'D');
    assert_eq!(
        f.chain(),
        [
            "vm37-000003.vmdk",
            "vm37-000002.vmdk",
            "vm37-000001.vmdk",
            "vm37.vmdk"
        ]
    );
    assert_eq!(
        (f.state(s1.uid), f.state(s2), f.state(s3), f.current(0)),
        (a.clone(), ab.clone(), abc.clone(), abcd.clone())
    );
    let db = read_vmsd(&f.vm().vmsd_path()).unwrap();
    assert_eq!(db.current(), Some(s3));
    assert_eq!(db.get(s3).unwrap().parent, Some(s2));

    // Remove the middle snapshot: its redo log (taken at s2) merges into s2's disk.
    let out = f.lock().remove_snapshot(s2, &mut ()).unwrap();
    assert_eq!(out.merged.len(), 1);
    assert_eq!(
        f.chain(),
        ["vm37-000003.vmdk", "vm37-000001.vmdk", "vm37.vmdk"]
    );
    assert_eq!(
        (f.state(s1.uid), f.state(s3), f.current(0)),
        (a.clone(), abc.clone(), abcd.clone())
    );
    let db = read_vmsd(&f.vm().vmsd_path()).unwrap();
    assert_eq!(db.get(s3).unwrap().parent, Some(s1.uid));
    // s3 recorded the merged file: the .vmsd now names the file it merged into.
    assert_eq!(db.get(s3).unwrap().disks[0].1, "vm37-000001.vmdk");
    assert!(!f.vm().dir.join("vm37-Snapshot2.vmsn").exists());

    // Revert to s3: the current state is discarded, s3's disk gets a fresh child.
    f.lock().revert_to_snapshot(s3, &mut ()).unwrap();
    assert_eq!(
        f.chain(),
        ["vm37-000004.vmdk", "vm37-000001.vmdk", "vm37.vmdk"]
    );
    assert_eq!(f.current(0), abc);
    f.write(0, 0, 512, b'E');

    // Revert to s1 makes a branch: vm37.vmdk keeps both children.
    let out = f.lock().revert_to_snapshot(s1.uid, &mut ()).unwrap();
    assert_eq!(out.deleted.len(), 1, "{out:?}");
    assert_eq!(f.current(0), a);
    assert_eq!(f.state(s3), abc);
    assert_eq!(
        read_vmsd(&f.vm().vmsd_path()).unwrap().current(),
        Some(s1.uid)
    );

    // Removing s1 cannot write vm37.vmdk (two children): nothing merges.
    let out = f.lock().remove_snapshot(s1.uid, &mut ()).unwrap();
    assert!(out.merged.is_empty(), "{out:?}");
    assert_eq!((f.state(s3), f.current(0)), (abc.clone(), a.clone()));

    // Removing s3: its file is no longer needed and goes; then the branch collapses.
    f.write(0, 4096, 512, b'F');
    let af = with(&a, 4096, 512, b'F');
    f.lock().remove_snapshot(s3, &mut ()).unwrap();
    assert_eq!(f.vmdk_files(), ["vm37-flat.vmdk", "vm37.vmdk"]);
    assert_eq!(f.vm().config.disks()[0].file_name, "vm37.vmdk");
    assert_eq!(f.current(0), af);
    assert!(read_vmsd(&f.vm().vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
}

#[test]
fn remove_all_with_two_disks_commits_into_the_base_disks() {
    let f = setup(2);
    f.write(0, 0, 1000, 1);
    f.write(1, 500, 1000, 2);
    f.lock().create_snapshot("a", "").unwrap();
    f.write(0, 100, 100, 3);
    let created = f.lock().create_snapshot("b", "").unwrap();
    assert_eq!(created.disks.len(), 2);
    assert_eq!(
        created.disks[1].redo.file_name().unwrap(),
        "vm37_1-000002.vmdk"
    );
    f.write(1, 0, 10, 4);
    let (d0, d1) = (f.current(0), f.current(1));
    let out = f.lock().remove_all_snapshots(&mut ()).unwrap();
    assert_eq!(out.merged.len(), 4, "{out:?}");
    assert_eq!((f.current(0), f.current(1)), (d0, d1));
    let names: Vec<String> = f
        .vm()
        .config
        .disks()
        .iter()
        .map(|d| d.file_name.clone())
        .collect();
    assert_eq!(names, ["vm37.vmdk", "vm37_1.vmdk"]);
    assert_eq!(
        f.vmdk_files(),
        [
            "vm37-flat.vmdk",
            "vm37.vmdk",
            "vm37_1-flat.vmdk",
            "vm37_1.vmdk"
        ]
    );
}

#[test]
fn consolidate_commits_what_no_snapshot_owns_and_deletes_leftovers() {
    let f = setup(1);
    f.write(0, 0, 4096, 9);
    let vmsd = f.vm().vmsd_path();
    let before = std::fs::read(&vmsd).ok();
    // A backup that died after its snapshot: the .vmx points one level deeper than the
    // .vmsd explains.
    f.lock().create_snapshot("_vcb-backup", "").unwrap();
    match &before {
        Some(b) => std::fs::write(&vmsd, b).unwrap(),
        None => std::fs::remove_file(&vmsd).unwrap(),
    }
    f.write(0, 8192, 4096, 7);
    let expect = f.current(0);
    // And a redo log made by a snapshot that died before touching the .vmx.
    let top = f.vm().disks(&f.host).unwrap()[0].path.clone();
    vmdk::create_child(
        &top,
        &f.vm().dir.join("vm37-000009.vmdk"),
        vmdk::ChildFormat::VmfsSparse,
    )
    .unwrap();
    let out = f.lock().consolidate(&mut ()).unwrap();
    assert_eq!(out.merged.len(), 1, "{out:?}");
    assert!(
        out.deleted.iter().any(|p| p.ends_with("vm37-000009.vmdk")),
        "{out:?}"
    );
    assert_eq!(f.vmdk_files(), ["vm37-flat.vmdk", "vm37.vmdk"]);
    assert_eq!(f.current(0), expect);
}

#[test]
fn leftover_redo_logs_are_noted_and_left_until_consolidate() {
    let f = setup(1);
    let s = f.lock().create_snapshot("s", "").unwrap();
    // A second child of the snapshot's disk, as a crashed run could leave it.
    let stray = f.vm().dir.join("vm37-000009.vmdk");
    vmdk::create_child(&s.disks[0].base, &stray, vmdk::ChildFormat::VmfsSparse).unwrap();
    let out = f.lock().remove_snapshot(s.uid, &mut ()).unwrap();
    assert!(
        out.notes.iter().any(|n| n.contains("vm37-000009.vmdk")),
        "{out:?}"
    );
    assert!(
        out.merged.is_empty(),
        "the parent of a leftover is never written: {out:?}"
    );
    assert!(stray.exists());
    let out = f.lock().consolidate(&mut ()).unwrap();
    assert_eq!((out.deleted.len(), out.merged.len()), (1, 1), "{out:?}");
    assert_eq!(f.vmdk_files(), ["vm37-flat.vmdk", "vm37.vmdk"]);
}

#[test]
fn an_interrupted_merge_is_finished_by_the_next_lock_holder() {
    let f = setup(1);
    f.write(0, 0, 4096, 1);
    let snap = f.lock().create_snapshot("s", "").unwrap();
    f.write(0, 0, 512, 2);
    let expect = f.current(0);
    let vm = f.vm();
    // Simulate a crash after the commit, before the .vmx was rewritten: the .vmx names
    // a redo log that no longer exists.
    let mut db = read_vmsd(&vm.vmsd_path()).unwrap();
    db.remove(snap.uid).unwrap();
    std::fs::write(vm.vmsd_path(), db.to_dict().unwrap().to_string()).unwrap();
    let journal = format!(
        "version = 1\nop = \"commit\"\nchild = {:?}\nparent = {:?}\n",
        snap.disks[0].redo, snap.disks[0].base
    );
    std::fs::write(vm.dir.join(JOURNAL_FILE), journal).unwrap();
    vmdk::commit(
        &snap.disks[0].redo,
        None,
        &vmdk::OpenOptions::read_only(),
        &mut (),
    )
    .unwrap();
    assert!(vm.disks(&f.host).is_err());
    drop(f.lock());
    assert!(!vm.dir.join(JOURNAL_FILE).exists());
    assert_eq!(f.vm().config.disks()[0].file_name, "vm37.vmdk");
    assert_eq!(f.current(0), expect);
}

#[test]
fn error_busy_while_another_holds_the_lock() {
    let f = setup(1);
    let held = f.vm().lock(LockMode::NoWait).unwrap();
    let e = f.host.lock_vm(f.vm, LockMode::NoWait).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    drop(held);
    f.lock();
}

#[test]
fn error_unknown_and_ambiguous_snapshot() {
    let f = setup(1);
    let first = f.lock().create_snapshot("same", "").unwrap().uid;
    f.lock().create_snapshot("same", "").unwrap();
    let locked = f.lock();
    assert!(matches!(
        locked.find_snapshot("same"),
        Err(Error::AmbiguousSnapshot { count: 2, .. })
    ));
    assert_eq!(locked.find_snapshot(&first.to_string()).unwrap(), first);
    assert!(matches!(
        locked.find_snapshot("nope"),
        Err(Error::UnknownSnapshot { .. })
    ));
}

#[test]
fn error_hostile_files_change_nothing() {
    let f = setup(1);
    let vm = f.vm();
    let vmx_text = std::fs::read_to_string(&vm.vmx_path).unwrap();
    let files = f.vmdk_files();
    // A disk outside every datastore.
    let outside = vmx_text.replace("\"vm37.vmdk\"", "\"/etc/passwd\"");
    std::fs::write(&vm.vmx_path, &outside).unwrap();
    let e = f.host.lock_vm(f.vm, LockMode::NoWait).unwrap_err();
    assert!(matches!(e, Error::OutsideDatastores { .. }), "{e}");
    // A relative name climbing out of the VM folder.
    std::fs::write(
        &vm.vmx_path,
        vmx_text.replace("\"vm37.vmdk\"", "\"../x/vm.vmdk\""),
    )
    .unwrap();
    let e = f.host.lock_vm(f.vm, LockMode::NoWait).unwrap_err();
    assert!(e.to_string().contains("`..`"), "{e}");
    // Duplicate keys and malformed lines.
    std::fs::write(&vm.vmx_path, format!("{vmx_text}displayName = \"again\"\n")).unwrap();
    let e = f.host.vm(f.vm).unwrap_err();
    assert!(e.to_string().contains("duplicate key"), "{e}");
    std::fs::write(&vm.vmx_path, format!("{vmx_text}this is not an entry\n")).unwrap();
    let e = f.host.vm(f.vm).unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");
    // A snapshot cycle in the .vmsd.
    std::fs::write(&vm.vmx_path, &vmx_text).unwrap();
    let cycle = "snapshot.lastUID = \"2\"\nsnapshot.numSnapshots = \"2\"\n\
        snapshot0.uid = \"1\"\nsnapshot0.parent = \"2\"\nsnapshot0.filename = \"a.vmsn\"\n\
        snapshot1.uid = \"2\"\nsnapshot1.parent = \"1\"\nsnapshot1.filename = \"b.vmsn\"\n";
    std::fs::write(vm.vmsd_path(), cycle).unwrap();
    let e = f.host.lock_vm(f.vm, LockMode::NoWait).unwrap_err();
    assert!(e.to_string().contains("own ancestor"), "{e}");
    assert_eq!(std::fs::read_to_string(vm.vmsd_path()).unwrap(), cycle);
    assert_eq!(f.vmdk_files(), files);
}

#[test]
fn issue_4_consolidate_removes_a_recorded_leftover_backup_snapshot() {
    let f = setup(1);
    f.write(0, 0, 4096, 3);
    let user = f.lock().create_snapshot("user", "").unwrap();
    f.write(0, 4096, 4096, 4);
    // A backup killed after its snapshot was recorded in the .vmsd: the VM went on writing.
    f.lock()
        .create_snapshot(super::BACKUP_SNAPSHOT_NAME, "")
        .unwrap();
    f.write(0, 8192, 4096, 5);
    let expect = f.current(0);
    let user_state = f.state(user.uid);
    let out = f.lock().consolidate(&mut ()).unwrap();
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("leftover backup snapshot")),
        "{out:?}"
    );
    let lock = f.lock();
    let names: Vec<String> = lock
        .snapshots()
        .snapshots()
        .iter()
        .map(|s| s.display_name.clone())
        .collect();
    drop(lock);
    assert_eq!(names, vec!["user".to_string()]);
    assert_eq!(f.current(0), expect, "current state keeps every byte");
    assert_eq!(
        f.state(user.uid),
        user_state,
        "the user's snapshot is intact"
    );
    assert_eq!(f.chain().len(), 2, "base + one redo log: {:?}", f.chain());
}

#[test]
fn memory_file_names_follow_the_vmsn() {
    assert_eq!(
        memory_file_name("vm37-Snapshot3.vmsn").as_deref(),
        Some("vm37-Snapshot3.vmem")
    );
    assert_eq!(memory_file_name("state.bin"), None);
    assert_eq!(memory_file_name(".vmsn"), None);
}

/// A snapshot's memory file (as `create_snapshot_with_memory` leaves it) on a VM that
/// does not run: revert links it to the suspend file, reverting again replaces that
/// state, remove deletes the memory file, and a suspended state of other origin still
/// refuses a revert.
#[test]
fn revert_to_a_snapshot_with_memory_leaves_the_vm_suspended() {
    let f = setup(1);
    let mut locked = f.lock();
    let snap = locked.create_snapshot("m", "").unwrap();
    let dir = f.vm().dir;
    let vmem = dir.join(format!("vm37-Snapshot{}.vmem", snap.uid));
    std::fs::write(&vmem, b"memory state").unwrap();
    assert_eq!(locked.snapshot_memory_file(snap.uid), Some(vmem.clone()));
    f.write(0, 0, 512, 7);

    locked.revert_to_snapshot(snap.uid, &mut ()).unwrap();
    let vmss = dir.join("vm37.vmss");
    assert_eq!(std::fs::read(&vmss).unwrap(), b"memory state");
    assert_eq!(locked.power_state(), crate::PowerState::Suspended);
    assert_eq!(f.current(0), f.state(snap.uid));
    // The suspended state is the snapshot's own: reverting again replaces it.
    locked.revert_to_snapshot(snap.uid, &mut ()).unwrap();
    assert_eq!(locked.power_state(), crate::PowerState::Suspended);

    // Removing the snapshot deletes its memory file; the suspended state stays.
    let out = locked.remove_snapshot(snap.uid, &mut ()).unwrap();
    assert!(out.deleted.contains(&vmem), "{out:?}");
    assert!(!vmem.exists());
    assert_eq!(std::fs::read(&vmss).unwrap(), b"memory state");
    // A suspended state that is no snapshot's refuses a revert.
    let s2 = locked.create_snapshot("plain", "").unwrap();
    let e = locked.revert_to_snapshot(s2.uid, &mut ()).unwrap_err();
    assert!(matches!(e, Error::WrongPowerState { .. }), "{e}");
    std::fs::remove_file(&vmss).unwrap();
    // Reverting to a snapshot without memory leaves the VM powered off.
    locked.revert_to_snapshot(s2.uid, &mut ()).unwrap();
    assert_eq!(locked.power_state(), crate::PowerState::PoweredOff);
}

#[test]
fn consolidate_deletes_orphaned_memory_files() {
    let f = setup(1);
    let mut locked = f.lock();
    let snap = locked.create_snapshot("m", "").unwrap();
    let dir = f.vm().dir;
    let kept = dir.join(format!("vm37-Snapshot{}.vmem", snap.uid));
    let orphan = dir.join("vm37-Snapshot9.vmem");
    let partial = dir.join("vm37-Snapshot10.vmem.partial");
    let other = dir.join("other-Snapshot9.vmem");
    for p in [&kept, &orphan, &partial, &other] {
        std::fs::write(p, b"x").unwrap();
    }
    let out = locked.consolidate(&mut ()).unwrap();
    assert!(kept.exists() && other.exists());
    assert!(!orphan.exists() && !partial.exists(), "{out:?}");
}

#[test]
fn destroy_deletes_snapshot_memory_files() {
    let mut f = setup(1);
    let mut locked = f.lock();
    let snap = locked.create_snapshot("m", "").unwrap();
    drop(locked);
    let dir = f.vm().dir;
    let vmem = dir.join(format!("vm37-Snapshot{}.vmem", snap.uid));
    std::fs::write(&vmem, b"x").unwrap();
    let out = f.host.destroy_vm(f.vm, LockMode::NoWait).unwrap();
    assert!(out.deleted.contains(&vmem), "{out:?}");
    assert!(!dir.exists());
}
