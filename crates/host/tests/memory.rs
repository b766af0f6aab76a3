//! Snapshots with memory of running VMs: real QEMU running the runtime crate's test
//! guest, which keeps writing sequence-numbered blocks to its disk and reports its
//! progress on the serial console. A guest started from a memory snapshot must carry on
//! from the sequence number it had at the snapshot (same boot), on a disk that holds
//! exactly what it had written by then. Figures are printed with a `figure:` prefix
//! (see them with `--nocapture`).

#[path = "../../runtime/tests/it/util.rs"]
#[allow(dead_code)]
mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host::{Error, Host, LockMode, PowerOnOptions, PowerState, VmRef};
use runtime::RuntimeState;
use vmx::DiskNode;

use util::{
    check_point_in_time, disk_blocks, guest, qemu_img_check, Guest, Layout, TestVm, BLOCKS,
};

/// The guest reports progress every this many writes (`vcb.every` in util.rs).
const EVERY: u64 = 16;

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

/// A host whose datastore `ds` is the test VM's folder, with the VM registered.
fn host_for(t: &TestVm, name: &str) -> (tempfile::TempDir, Host, VmRef) {
    let root = tempfile::tempdir().unwrap();
    let mut host = Host::init(root.path(), "mem").unwrap();
    host.add_datastore("ds", t.dir.path()).unwrap();
    let vmx = format!("[ds] {name}.vmx").parse().unwrap();
    let vm = host.register_vm(&vmx, None, None).unwrap();
    (root, host, vm.moref)
}

/// The serial log's length now: what the guest writes from here on is parsed apart.
fn serial_mark(t: &TestVm) -> usize {
    std::fs::read_to_string(&t.serial).unwrap_or_default().len()
}

/// What the guest reported after `mark`.
fn serial_since(t: &TestVm, mark: usize) -> Guest {
    let text = std::fs::read_to_string(&t.serial).unwrap_or_default();
    Guest::parse(text.get(mark..).unwrap_or_default())
}

/// Waits until the guest, started from a state saved when the disk's highest seq was
/// `high`, reported two progress lines; checks it carried on from there in the same
/// boot (the first write reported is the first progress point at or after `high`).
fn check_carries_on(t: &TestVm, mark: usize, run: &str, high: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let g = serial_since(t, mark);
        if g.progress.len() >= 2 {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "no progress after the resume\n{}",
            t.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(after.runs.is_empty(), "the guest booted again: {after:?}");
    assert_eq!(t.guest().runs, [run.to_owned()], "one boot only");
    let first = after.progress[0];
    // Write `high` (or `high + 1`, in flight at the stop and completed by the drain) was
    // the newest on disk; the next progress point is the first multiple of EVERY from
    // there (`high` itself when its report had not been printed yet).
    assert!(
        first >= high && first <= high + EVERY,
        "resumed guest reports seq {first}, the snapshot's disk ends at {high}"
    );
    assert_eq!(first % EVERY, 0);
    eprintln!(
        "figure: disk at the snapshot ends at seq {high}; the resumed guest reports {first} first"
    );
}

/// The runtime alone: memory snapshot of a running VM, guest keeps writing, power off,
/// a fresh redo log over the snapshot's parent, start from the state file.
#[test]
fn runtime_memory_snapshot_and_start_from_it() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "rm",
        Layout {
            controller: "pvscsi",
            format: vmdk::DiskFormat::Thin,
            agent: false,
        },
    );
    let node: DiskNode = "scsi0:0".parse().unwrap();
    let opts = runtime::PowerOnOptions::default();
    t.vm.power_on(&opts).unwrap();
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();
    let state = t.dir.path().join("rm-Snapshot1.vmem");
    let r1 = t.dir.path().join("rm-000001.vmdk");

    let snap = t
        .vm
        .live_snapshot_with_memory(&[(node, r1.clone())], vmdk::ChildFormat::VmfsSparse, &state)
        .unwrap();
    eprintln!(
        "figure: runtime memory snapshot {:.2?} (guest paused {:.2?}, memory save {:.2?}, state file {} MiB)",
        snap.elapsed,
        snap.disks.guest_paused,
        snap.save_elapsed,
        snap.size_bytes >> 20
    );
    assert!(matches!(
        t.vm.status().unwrap(),
        RuntimeState::Running { .. }
    ));
    let log = std::fs::read_to_string(t.dir.path().join("vmware.log")).unwrap();
    let saved = log.lines().find(|l| l.contains("memory state saved"));
    eprintln!("figure: vmware.log: {}", saved.unwrap_or("-"));
    let status =
        t.vm.qmp()
            .unwrap()
            .execute("query-status", serde_json::Value::Null);
    assert_eq!(status.unwrap()["status"], "running");
    assert_eq!(std::fs::metadata(&state).unwrap().len(), snap.size_bytes);
    assert!(!t.dir.path().join("rm-Snapshot1.vmem.partial").exists());
    assert_eq!(t.vm.node_chain(node).unwrap(), [r1.clone(), t.disk.clone()]);
    let high = check_point_in_time(&disk_blocks(&t.disk), &run);
    let parent = disk_blocks(&t.disk);
    // The guest runs on after the save: two more laps, the parent unchanged.
    t.wait_guest("two more laps", Duration::from_secs(120), |g| {
        g.last_seq >= Some(high + 2 * BLOCKS)
    });
    assert!(disk_blocks(&t.disk) == parent, "the parent changed");

    t.vm.power_off().unwrap();
    // Back to the snapshot: a fresh redo log over the parent.
    vmdk::delete(&r1).unwrap();
    let r2 = t.dir.path().join("rm-000002.vmdk");
    vmdk::create_child(&t.disk, &r2, vmdk::ChildFormat::VmfsSparse).unwrap();
    let vmx = std::fs::read_to_string(t.vm.vmx_path()).unwrap();
    let vmx = vmx.replace("\"rm.vmdk\"", "\"rm-000002.vmdk\"");
    std::fs::write(t.vm.vmx_path(), vmx).unwrap();

    let mark = serial_mark(&t);
    let on = t.vm.resume_from(&state, &opts).unwrap();
    eprintln!("figure: start from the state file {:.2?}", on.elapsed);
    assert!(state.exists(), "the state file is kept");
    let again = t.vm.resume_from(&state, &opts).unwrap_err();
    assert!(
        matches!(again, runtime::Error::AlreadyRunning { .. }),
        "{again}"
    );
    check_carries_on(&t, mark, &run, high);

    t.vm.shutdown(Duration::from_secs(60)).unwrap();
    let stopped = t.guest().stopped.expect("guest reported its last write");
    let got = check_point_in_time(&disk_blocks(&r2), &run);
    assert_eq!(got, stopped, "the disk lacks writes the guest reported");
    qemu_img_check(&r2);
    qemu_img_check(&t.disk);
}

/// The .vmx's disk at scsi0:0, resolved in the VM folder.
fn current_disk(host: &Host, moref: VmRef) -> PathBuf {
    let vm = host.vm(moref).unwrap();
    let node: DiskNode = "scsi0:0".parse().unwrap();
    vm.dir.join(&vm.config.disk(node).unwrap().file_name)
}

#[test]
fn memory_snapshot_revert_and_resume_carry_on_from_the_snapshot() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "hm",
        Layout {
            controller: "virtio-scsi",
            format: vmdk::DiskFormat::Thin,
            agent: false,
        },
    );
    let (_root, host, moref) = host_for(&t, "hm");
    let disk = canon(&t.disk);
    let opts = PowerOnOptions::default();
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.power_on(&opts).unwrap();
    drop(locked);
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();

    // The snapshot, taken while the guest writes.
    let before = t.guest().last_seq.unwrap();
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    let started = Instant::now();
    let snap = locked
        .create_snapshot_with_memory("m1", "with memory")
        .unwrap();
    let took = started.elapsed();
    let mem = snap.memory.clone().expect("memory saved");
    let vmem = t.dir.path().join(format!("hm-Snapshot{}.vmem", snap.uid));
    assert_eq!(canon(&mem.path), canon(&vmem));
    assert_eq!(std::fs::metadata(&vmem).unwrap().len(), mem.size_bytes);
    assert_eq!(locked.snapshot_memory_file(snap.uid), Some(vmem.clone()));
    assert_eq!(locked.power_state(), PowerState::PoweredOn);
    assert_eq!(snap.disks[0].base, disk);
    eprintln!(
        "figure: create_snapshot_with_memory {took:.2?} (guest paused {:.2?}, memory save {:.2?}, {} MiB)",
        mem.guest_paused,
        mem.save_elapsed,
        mem.size_bytes >> 20
    );
    let parent = disk_blocks(&disk);
    let high = check_point_in_time(&parent, &run);
    assert!(high >= before, "the snapshot's disk misses reported writes");

    // The guest runs on; reverting a running VM is refused.
    t.wait_guest("two more laps", Duration::from_secs(120), |g| {
        g.last_seq >= Some(high + 2 * BLOCKS)
    });
    assert!(disk_blocks(&disk) == parent, "the snapshot's disk changed");
    let e = locked.revert_to_snapshot(snap.uid, &mut ()).unwrap_err();
    assert!(
        matches!(&e, Error::WrongPowerState { reason, .. } if reason.contains("power it off first")),
        "{e}"
    );
    locked.power_off().unwrap();
    let e = locked.create_snapshot_with_memory("m2", "").unwrap_err();
    assert!(matches!(e, Error::WrongPowerState { .. }), "{e}");

    // Revert: the disks go back and the VM is suspended in the snapshot's memory state.
    let cleanup = locked.revert_to_snapshot(snap.uid, &mut ()).unwrap();
    assert!(cleanup.notes.is_empty(), "{cleanup:?}");
    assert_eq!(locked.power_state(), PowerState::Suspended);
    let vmss = t.dir.path().join("hm.vmss");
    assert!(vmss.exists());
    // Reverting again replaces that suspended state (it is the snapshot's own).
    locked.revert_to_snapshot(snap.uid, &mut ()).unwrap();
    assert_eq!(locked.power_state(), PowerState::Suspended);
    let now = current_disk(&host, moref);
    assert_ne!(canon(&now), disk);
    assert!(
        disk_blocks(&now) == parent,
        "the reverted disk is not the snapshot's"
    );

    let mark = serial_mark(&t);
    let on = locked.power_on(&opts).unwrap();
    eprintln!(
        "figure: power_on of the reverted VM (resume) {:.2?}",
        on.elapsed
    );
    assert_eq!(locked.power_state(), PowerState::PoweredOn);
    assert!(!vmss.exists() && vmem.exists());
    drop(locked);
    check_carries_on(&t, mark, &run, high);

    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.shutdown(Duration::from_secs(60)).unwrap();
    let stopped = t.guest().stopped.expect("guest reported its last write");
    let now = current_disk(&host, moref);
    assert_eq!(check_point_in_time(&disk_blocks(&now), &run), stopped);
    qemu_img_check(&now);
    qemu_img_check(&disk);

    // Removing the snapshot deletes its memory file; consolidate deletes orphaned ones.
    let cleanup = locked.remove_snapshot(snap.uid, &mut ()).unwrap();
    assert!(cleanup.deleted.contains(&vmem), "{cleanup:?}");
    assert!(!vmem.exists());
    let orphan = t.dir.path().join("hm-Snapshot7.vmem");
    let partial = t.dir.path().join("hm-Snapshot8.vmem.partial");
    std::fs::write(&orphan, b"x").unwrap();
    std::fs::write(&partial, b"x").unwrap();
    let cleanup = locked.consolidate(&mut ()).unwrap();
    assert!(!orphan.exists() && !partial.exists(), "{cleanup:?}");
    assert_eq!(check_point_in_time(&disk_blocks(&disk), &run), stopped);
    qemu_img_check(&disk);
}

#[test]
fn error_memory_snapshot_of_a_powered_off_vm() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("off.vmdk");
    vmdk::create(
        &disk,
        &vmdk::CreateSpec::new(1 << 20, vmdk::DiskFormat::Thin),
    )
    .unwrap();
    let vmx = "config.version = \"8\"\nvirtualHW.version = \"14\"\ndisplayName = \"off\"\n\
               memsize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\n\
               scsi0:0.fileName = \"off.vmdk\"\n";
    std::fs::write(dir.path().join("off.vmx"), vmx).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut host = Host::init(root.path(), "mem").unwrap();
    host.add_datastore("ds", dir.path()).unwrap();
    let moref = host
        .register_vm(&"[ds] off.vmx".parse().unwrap(), None, None)
        .unwrap()
        .moref;
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let before = names();
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    let e = locked.create_snapshot_with_memory("m", "").unwrap_err();
    assert!(
        matches!(
            &e,
            Error::WrongPowerState {
                state: PowerState::PoweredOff,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("running"), "{e}");
    assert!(locked.snapshots().snapshots().is_empty());
    assert_eq!(names(), before, "nothing made");
    // A plain snapshot still works, without memory.
    let snap = locked.create_snapshot("plain", "").unwrap();
    assert!(snap.memory.is_none());
    assert_eq!(locked.snapshot_memory_file(snap.uid), None);
}
