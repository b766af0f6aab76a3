//! Snapshots of running VMs through the host layer: real QEMU running the runtime
//! crate's test guest, which keeps writing sequence-numbered blocks to its disk.
//! Figures are printed with a `figure:` prefix (see them with `--nocapture`).

#[path = "../../runtime/tests/it/util.rs"]
#[allow(dead_code)]
mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host::snapshot::{BACKUP_SNAPSHOT_NAME, JOURNAL_FILE};
use host::{Error, Host, LockMode, PowerOnOptions, PowerState, Specifier, VmRef};
use serde_json::json;
use vmx::DiskNode;

use util::{check_point_in_time, disk_blocks, guest, qemu_img_check, Layout, TestVm, BLOCKS};

/// A host whose datastore `ds` is the test VM's folder, with the VM registered.
fn host_for(t: &TestVm, name: &str) -> (tempfile::TempDir, Host, VmRef) {
    let root = tempfile::tempdir().unwrap();
    let mut host = Host::init(root.path(), "live").unwrap();
    host.add_datastore("ds", t.dir.path()).unwrap();
    let vmx = format!("[ds] {name}.vmx").parse().unwrap();
    let vm = host.register_vm(&vmx, None, None).unwrap();
    (root, host, vm.moref)
}

/// `scsi0:0.fileName` as the .vmx on disk has it.
fn vmx_disk_name(host: &Host, moref: VmRef) -> String {
    let vm = host.vm(moref).unwrap();
    let node: DiskNode = "scsi0:0".parse().unwrap();
    vm.config.disk(node).unwrap().file_name.clone()
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

fn gone(redo: &Path) -> bool {
    let delta = redo.with_file_name(
        redo.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".vmdk", "-delta.vmdk"),
    );
    !redo.exists() && !delta.exists()
}

/// Waits until the guest has written a few more blocks.
fn more_writes(t: &TestVm) {
    let seq = t.guest().last_seq.unwrap_or(0);
    t.wait_guest("more writes", Duration::from_secs(60), |g| {
        g.last_seq >= Some(seq + 16)
    });
}

/// Powers the VM on through the host and waits for a full lap of guest writes.
fn boot(t: &TestVm, host: &Host, moref: VmRef) -> String {
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.power_on(&PowerOnOptions::default()).unwrap();
    let again = locked.power_on(&PowerOnOptions::default()).unwrap_err();
    assert!(matches!(again, Error::WrongPowerState { .. }), "{again}");
    drop(locked);
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    g.run().to_owned()
}

/// Shuts the guest down through the host and checks that the disk holds every write
/// the guest reported and passes `qemu-img check`.
fn shutdown_and_check(t: &TestVm, host: &Host, moref: VmRef, disk: &Path, run: &str) {
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.shutdown(Duration::from_secs(60)).unwrap();
    assert_eq!(locked.power_state(), PowerState::PoweredOff);
    drop(locked);
    let stopped = t.guest().stopped.expect("guest reported its last write");
    let high = check_point_in_time(&disk_blocks(disk), run);
    assert_eq!(high, stopped, "the disk lacks writes the guest reported");
    qemu_img_check(disk);
}

#[test]
fn live_snapshots_commit_and_a_middle_link_waits_for_power_off() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "hl",
        Layout {
            controller: "pvscsi",
            format: vmdk::DiskFormat::ZeroedThick,
            agent: false,
        },
    );
    let mut vmx = std::fs::read_to_string(t.vm.vmx_path()).unwrap();
    vmx += "guestinfo.ip = \"10.17.5.31\"\n";
    std::fs::write(t.vm.vmx_path(), vmx).unwrap();
    let (_root, host, moref) = host_for(&t, "hl");
    let node: DiskNode = "scsi0:0".parse().unwrap();
    let disk = canon(&t.disk);
    let vm = host.vm(moref).unwrap();
    assert_eq!(vm.power_state(&host), PowerState::PoweredOff);
    let run = boot(&t, &host, moref);
    assert_eq!(vm.power_state(&host), PowerState::PoweredOn);
    let on = Specifier::parse("powerstate:on").unwrap();
    assert_eq!(on.find(&host).unwrap(), [moref]);
    // No guest agent: the address comes from the .vmx.
    assert_eq!(vm.guest_ips(&host), ["10.17.5.31"]);
    let by_ip = Specifier::parse("ipaddr:10.17.5.31").unwrap();
    assert_eq!(by_ip.find(&host).unwrap(), [moref]);
    let rt = vm.runtime(&host);
    let r1 = t.dir.path().join("hl-000001.vmdk");
    let r2 = t.dir.path().join("hl-000002.vmdk");

    // The backup cycle: snapshot, read the static base, remove (a live commit).
    for cycle in 1..=3 {
        let before = t.guest().last_seq.unwrap();
        let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
        let started = Instant::now();
        let snap = locked
            .create_snapshot(BACKUP_SNAPSHOT_NAME, "live backup")
            .unwrap();
        let snap_took = started.elapsed();
        assert_eq!(snap.disks.len(), 1);
        assert_eq!(snap.disks[0].base, disk);
        assert_eq!(snap.disks[0].redo, r1);
        assert_eq!(rt.node_chain(node).unwrap(), [r1.clone(), disk.clone()]);
        assert_eq!(vmx_disk_name(&host, moref), "hl-000001.vmdk");
        let base = disk_blocks(&disk);
        let high = check_point_in_time(&base, &run);
        assert!(
            high >= before,
            "base misses writes reported before the snapshot"
        );
        more_writes(&t);
        assert!(
            disk_blocks(&disk) == base,
            "the base changed under the snapshot"
        );

        let started = Instant::now();
        let cleanup = locked.remove_snapshot(snap.uid, &mut ()).unwrap();
        let commit_took = started.elapsed();
        assert_eq!(cleanup.merged, [(r1.clone(), disk.clone())]);
        assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
        assert_eq!(vmx_disk_name(&host, moref), "hl.vmdk");
        assert!(gone(&r1));
        assert!(locked.snapshots().snapshots().is_empty());
        eprintln!(
            "figure: cycle {cycle}: create_snapshot {snap_took:.1?}, remove_snapshot (live commit) {commit_took:.1?}, base seq {high}"
        );
    }

    // Removing every snapshot commits both redo logs live, the newer one first.
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.create_snapshot("a", "").unwrap();
    more_writes(&t);
    locked.create_snapshot("b", "").unwrap();
    more_writes(&t);
    let cleanup = locked.remove_all_snapshots(&mut ()).unwrap();
    assert_eq!(
        cleanup.merged,
        [(r2.clone(), r1.clone()), (r1.clone(), disk.clone())]
    );
    assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
    assert_eq!(vmx_disk_name(&host, moref), "hl.vmdk");
    assert!(gone(&r1) && gone(&r2));
    drop(locked);

    // Removing the older of two snapshots would merge a link QEMU reads as backing: it
    // waits, and the data stays right.
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    let s1 = locked.create_snapshot("s1", "").unwrap();
    more_writes(&t);
    let s2 = locked.create_snapshot("s2", "").unwrap();
    more_writes(&t);
    assert_eq!(s2.disks[0].base, r1);
    assert_eq!(s2.disks[0].redo, r2);
    let cleanup = locked.remove_snapshot(s1.uid, &mut ()).unwrap();
    assert!(
        cleanup.merged.is_empty()
            && cleanup
                .deleted
                .iter()
                .all(|f| f.extension().is_some_and(|e| e == "vmsn")),
        "{cleanup:?}"
    );
    assert!(
        cleanup.notes.iter().any(|n| n.contains("after power-off")),
        "{:?}",
        cleanup.notes
    );
    assert_eq!(
        rt.node_chain(node).unwrap(),
        [r2.clone(), r1.clone(), disk.clone()]
    );
    more_writes(&t);
    let cleanup = locked.consolidate(&mut ()).unwrap();
    assert!(cleanup.merged.is_empty(), "{cleanup:?}");
    let e = locked.revert_to_snapshot(s2.uid, &mut ()).unwrap_err();
    assert!(matches!(e, Error::WrongPowerState { .. }), "{e}");
    drop(locked);

    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.shutdown(Duration::from_secs(60)).unwrap();
    let cleanup = locked.consolidate(&mut ()).unwrap();
    assert_eq!(cleanup.merged, [(r1.clone(), disk.clone())]);
    let cleanup = locked.remove_snapshot(s2.uid, &mut ()).unwrap();
    assert_eq!(cleanup.merged, [(r2.clone(), disk.clone())]);
    assert_eq!(vmx_disk_name(&host, moref), "hl.vmdk");
    assert!(gone(&r1) && gone(&r2));
    drop(locked);

    let stopped = t.guest().stopped.expect("guest reported its last write");
    let high = check_point_in_time(&disk_blocks(&disk), &run);
    assert_eq!(high, stopped, "the disk lacks writes the guest reported");
    qemu_img_check(&disk);
}

#[test]
fn killed_runs_are_reconciled_and_committed_live() {
    let Some(guest) = guest() else { return };
    let t = TestVm::new(
        &guest,
        "hk",
        Layout {
            controller: "virtio-scsi",
            format: vmdk::DiskFormat::Thin,
            agent: false,
        },
    );
    let (_root, host, moref) = host_for(&t, "hk");
    let node: DiskNode = "scsi0:0".parse().unwrap();
    let disk = canon(&t.disk);
    let run = boot(&t, &host, moref);
    let rt = host.vm(moref).unwrap().runtime(&host);
    let r1 = t.dir.path().join("hk-000001.vmdk");
    let journal = t.dir.path().join(JOURNAL_FILE);
    let write_journal = || {
        let text = format!(
            "version = 1\nop = \"live-commit\"\nchild = {:?}\nparent = {:?}\nnode = \"scsi0:0\"\n",
            r1.display().to_string(),
            disk.display().to_string()
        );
        std::fs::write(&journal, text).unwrap();
    };

    // 1. Killed between the switch and the .vmx write: the .vmx is one link behind.
    rt.live_snapshot_as(&[(node, r1.clone())], vmdk::ChildFormat::VmfsSparse)
        .unwrap();
    assert_eq!(vmx_disk_name(&host, moref), "hk.vmdk");
    more_writes(&t);
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    assert_eq!(vmx_disk_name(&host, moref), "hk-000001.vmdk");
    let cleanup = locked.consolidate(&mut ()).unwrap();
    assert_eq!(cleanup.merged, [(r1.clone(), disk.clone())]);
    assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
    assert_eq!(vmx_disk_name(&host, moref), "hk.vmdk");
    assert!(gone(&r1));
    drop(locked);

    // 2. Killed after journaling a live commit, before its job started.
    rt.live_snapshot_as(&[(node, r1.clone())], vmdk::ChildFormat::VmfsSparse)
        .unwrap();
    write_journal();
    more_writes(&t);
    let locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    assert!(!journal.exists());
    assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
    assert_eq!(vmx_disk_name(&host, moref), "hk.vmdk");
    assert!(gone(&r1));
    drop(locked);

    // 3. Killed while the commit job ran: the job waits in QEMU, ready to pivot.
    let redo_node = start_commit_job(&rt, node, &r1, &write_journal);
    // The guest keeps writing through the ready job.
    more_writes(&t);
    let locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    assert!(!journal.exists());
    assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
    assert_eq!(vmx_disk_name(&host, moref), "hk.vmdk");
    assert!(gone(&r1));
    assert!(!node_names(&rt).contains(&redo_node));
    drop(locked);

    // 4. Killed after the pivot, before the redo log's node and files were removed.
    let redo_node = start_commit_job(&rt, node, &r1, &write_journal);
    let mut q = rt.qmp().unwrap();
    q.execute("job-complete", json!({"id": "commit-scsi0-0"}))
        .unwrap();
    wait_until("the job to end", || {
        let jobs = q.execute("query-block-jobs", json!(null)).unwrap();
        jobs.as_array().unwrap().is_empty()
    });
    drop(q);
    assert_eq!(rt.node_chain(node).unwrap(), std::slice::from_ref(&disk));
    assert!(r1.exists() && node_names(&rt).contains(&redo_node));
    let locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    assert!(!journal.exists());
    assert!(gone(&r1));
    assert!(!node_names(&rt).contains(&redo_node));
    drop(locked);

    // 5. Suspended: snapshots work on the files and leave the disk's data as it was.
    let mut locked = host.lock_vm(moref, LockMode::Wait).unwrap();
    locked.suspend().unwrap();
    assert_eq!(locked.power_state(), PowerState::Suspended);
    let before = disk_blocks(&disk);
    let snap = locked.create_snapshot("while suspended", "").unwrap();
    assert_eq!(snap.disks[0].redo, r1);
    locked.remove_snapshot(snap.uid, &mut ()).unwrap();
    assert!(gone(&r1));
    assert!(
        disk_blocks(&disk) == before,
        "the suspended VM's disk changed"
    );
    locked.resume(&PowerOnOptions::default()).unwrap();
    assert_eq!(locked.power_state(), PowerState::PoweredOn);
    drop(locked);
    more_writes(&t);
    assert_eq!(t.guest().runs.len(), 1, "resumed, not rebooted");

    shutdown_and_check(&t, &host, moref, &disk, &run);
}

/// Polls `done` until it holds (a hang guard, not a timing assertion).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not seen in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of QEMU's block nodes.
fn node_names(rt: &runtime::Vm) -> Vec<String> {
    let mut q = rt.qmp().unwrap();
    let nodes = q
        .execute("query-named-block-nodes", json!({"flat": true}))
        .unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node-name"].as_str().map(str::to_owned))
        .collect()
}

/// What a vcb process killed during a live commit leaves: a redo log on top of the
/// disk (the .vmx not told), the journal, and a commit job in QEMU that has caught up
/// and waits to pivot. Returns the redo log's block node.
fn start_commit_job(
    rt: &runtime::Vm,
    node: DiskNode,
    redo: &Path,
    write_journal: &dyn Fn(),
) -> String {
    let snap = rt
        .live_snapshot_as(&[(node, redo.to_path_buf())], vmdk::ChildFormat::VmfsSparse)
        .unwrap();
    write_journal();
    let mut q = rt.qmp().unwrap();
    // Started with the guest stopped, as the runtime does (QEMU 10.0's commit job
    // could miss writes landing during its first scan).
    q.execute("stop", json!(null)).unwrap();
    let args = json!({
        "job-id": "commit-scsi0-0",
        "device": snap.disks[0].qemu_node,
        "base-node": runtime::node_name(node),
    });
    q.execute("block-commit", args).unwrap();
    wait_until("the commit job to be ready", || {
        let jobs = q.execute("query-block-jobs", json!(null)).unwrap();
        jobs[0]["ready"] == json!(true)
    });
    q.execute("cont", json!(null)).unwrap();
    snap.disks[0].qemu_node.clone()
}
