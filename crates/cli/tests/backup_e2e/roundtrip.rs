//! Backup of a two-disk VM with a user snapshot, `qemu-img compare` of every exported
//! disk, and restores: to the original place, to another datastore/folder/pool, and
//! under each conflict policy.

use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

/// The expected content of each disk of [`vm37_with_snapshot`].
fn vm_with_snapshot(env: &Env) -> Vec<Vec<u8>> {
    vm37_with_snapshot(env).iter().map(|p| content(p)).collect()
}

#[test]
fn backup_two_disks_with_a_user_snapshot_then_restore_in_place() {
    let env = Env::new();
    let expected = vm_with_snapshot(&env);
    let dest = env.path("backup-vm37");
    let out = env.ok(
        "vcbMounter",
        &["-a", "name:vm37", "-r", dest.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!(
            "Converting \"{}/scsi0-0-0-vm37.vmdk\" (compact file):",
            dest.display()
        )),
        "{out}"
    );
    assert!(out.contains("scsi0-1-0-vm37_1.vmdk"), "{out}");
    assert!(!dest.join(backup::INCOMPLETE_MARKER).exists());

    // The catalog records provisioning, sizes and checksums; the user snapshot is kept
    // and the backup snapshot is gone.
    let c = catalog(&dest);
    let formats: Vec<_> = c.disks.iter().map(|d| d.format.clone().unwrap()).collect();
    assert_eq!(formats, ["thin", "zeroedthick"]);
    assert!(
        c.files.iter().any(|f| f.name == "vm37.vmx")
            && c.files.iter().any(|f| f.name == "vm37.vmsd")
    );
    let h = env.host();
    let vm = h.find_vm("vm37").unwrap();
    let db = host::read_vmsd(&vm.vmsd_path()).unwrap();
    let names: Vec<_> = db
        .snapshots()
        .iter()
        .map(|s| s.display_name.clone())
        .collect();
    assert_eq!(names, ["before-upgrade"]);
    let tops = disk_paths(&env, "vm37");
    assert!(
        tops[0].to_str().unwrap().ends_with("-000001.vmdk"),
        "{tops:?}"
    );
    for (top, want) in tops.iter().zip(&expected) {
        assert_eq!(&content(top), want, "the VM lost data");
    }

    // Every exported disk equals the VM's current disk.
    if require_tool("qemu-img") {
        qemu_same(&dest.join("scsi0-0-0-vm37.vmdk"), &tops[0]);
        qemu_same(&dest.join("scsi0-1-0-vm37_1.vmdk"), &tops[1]);
    }
    assert_eq!(content(&dest.join("scsi0-0-0-vm37.vmdk")), expected[0]);
    assert_eq!(content(&dest.join("scsi0-1-0-vm37_1.vmdk")), expected[1]);

    // Destroy the VM and restore it where it was.
    let mut h = env.host();
    h.destroy_vm(vm.moref, host::LockMode::Wait).unwrap();
    let out = env.ok("vcbRestore", &["-s", dest.to_str().unwrap(), "-l", "abort"]);
    assert!(out.contains("Verified"), "{out}");
    let h = env.host();
    let vm = h.find_vm("vm37").unwrap();
    assert_eq!(vm.vmx.to_string(), "[datastore1] vm37/vm37.vmx");
    let disks = vm.disks(&h).unwrap();
    assert_eq!(disks[0].path.file_name().unwrap(), "vm37.vmdk");
    for (d, want) in disks.iter().zip(&expected) {
        assert_eq!(&content(&d.path), want);
    }
    let fmt = |p: &std::path::Path| DiskFormat::of_descriptor(&vmdk::read_descriptor(p).unwrap().0);
    assert_eq!(fmt(&disks[0].path), Some(DiskFormat::Thin));
    assert_eq!(fmt(&disks[1].path), Some(DiskFormat::ZeroedThick));
    assert!(host::read_vmsd(&vm.vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
    if require_tool("qemu-img") {
        qemu_same(&dest.join("scsi0-0-0-vm37.vmdk"), &disks[0].path);
        qemu_same(&dest.join("scsi0-1-0-vm37_1.vmdk"), &disks[1].path);
    }
}

#[test]
fn restore_to_another_datastore_folder_and_pool() {
    let env = Env::new();
    let expected = vm_with_snapshot(&env);
    let dest = env.path("b");
    env.ok(
        "vcb",
        &["backup", "vm37", dest.to_str().unwrap(), "--monolithic"],
    );
    assert!(
        !dest.join("scsi0-0-0-vm37-s001.vmdk").exists(),
        "-M 1 writes one file per disk"
    );
    let mut h = env.host();
    let ds2 = env.path("ds2");
    std::fs::create_dir(&ds2).unwrap();
    h.add_datastore("ds2", &ds2).unwrap();
    h.create_container(host::ContainerKind::Folder, "/Restored")
        .unwrap();
    h.create_container(host::ContainerKind::Pool, "/Gold")
        .unwrap();

    let mut c = catalog(&dest);
    let folder = vmx::DatastorePath::new("ds2", "copy/").unwrap();
    c.display_name = "ignored name".into();
    retarget(&mut c, &folder, "copy", &["first.vmdk", "second.vmdk"]);
    c.folder_path = Some("/ha-datacenter/vm/Restored".into());
    c.resource_pool = Some("/ha-datacenter/host/elsewhere/Resources/Gold".into());
    restore_with_catalog(&env, "vcb", &dest, &c);

    let h = env.host();
    let copy = registered(&env, "[ds2] copy/copy.vmx");
    assert_eq!(copy.moref, host::VmRef(17));
    assert_eq!(copy.name(), "vm37", "the display name comes from the .vmx");
    assert_eq!(
        (copy.folder.as_str(), copy.pool.as_str()),
        ("/Restored", "/Gold")
    );
    let disks = copy.disks(&h).unwrap();
    assert_eq!(
        disks[0].path,
        ds2.join("copy/first.vmdk").canonicalize().unwrap()
    );
    for (d, want) in disks.iter().zip(&expected) {
        assert_eq!(&content(&d.path), want);
    }
    // The original is untouched.
    let orig = disk_paths(&env, "moref:16");
    assert_eq!(content(&orig[0]), expected[0]);
}

#[test]
fn conflict_policies() {
    let env = Env::new();
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 3);
    let dest = env.path("b");
    let d = dest.to_str().unwrap();
    env.ok("vcbMounter", &["-a", "name:vm1", "-r", d]);
    let disk = disk_paths(&env, "vm1").remove(0);
    let original = content(&disk);
    write(&disk, 0, b"changed after the backup");
    let changed = content(&disk);

    // prompt without a terminal fails clearly; abort stops; neither changes anything.
    let err = env.fails("vcbRestore", &["-s", d]);
    assert!(err.contains("no terminal"), "{err}");
    let err = env.fails("vcbRestore", &["-s", d, "-l", "abort"]);
    assert!(
        err.contains("already exists") && err.contains("aborted"),
        "{err}"
    );
    assert_eq!(content(&disk), changed);

    // keep: everything that exists stays.
    let out = env.ok("vcbRestore", &["-s", d, "-l", "keep"]);
    assert!(out.contains("Kept"), "{out}");
    assert_eq!(content(&disk), changed);
    assert_eq!(env.host().entries().len(), 1);

    // overwrite (through -b, VCB's synonym): the backup's content is back, still one VM.
    env.ok("vcbRestore", &["-s", d, "-b", "overwrite"]);
    let disk = disk_paths(&env, "vm1").remove(0);
    assert_eq!(content(&disk), original);
    assert_eq!(env.host().entries().len(), 1);
}

#[test]
fn demo_runs_and_verifies() {
    let env = Env::new();
    let root = env.path("demo");
    let out = std::process::Command::new(bin("vcb"))
        .args(["demo", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = text(&out.stdout);
    assert!(
        s.contains("Verified: the restored disk equals the backup byte for byte"),
        "{s}"
    );
    assert!(
        s.contains("Verified: the restored file equals the guest's"),
        "the demo ends with a single-file restore: {s}"
    );
    assert!(root.join("restored-files/quarterly-report.txt").is_file());
    assert!(
        s.contains("Verified: the proxy's backup (") && s.contains("equals the VM's disk"),
        "the demo backs the VM up through the host agent: {s}"
    );
    assert!(root
        .join("volumes/datastore2/demo-vm-restored/demo-vm.vmx")
        .exists());
    // A second run replaces the first demo.
    let again = std::process::Command::new(bin("vcb"))
        .args(["demo", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
}

#[test]
fn suspended_vm_keeps_its_state_file() {
    let env = Env::new();
    let vm = env.vm("sus", &[(MB, DiskFormat::Thin)], 2);
    std::fs::write(vm.dir.join("sus.vmss"), b"saved memory").unwrap();
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &[
            "-a",
            "powerstate:suspended",
            "-r",
            dest.to_str().unwrap(),
            "-M",
            "1",
        ],
    );
    let c = catalog(&dest);
    assert_eq!(c.state, vmx::PowerState::Suspended);
    assert!(c.file("sus.vmss").is_some());
    let mut h = env.host();
    h.destroy_vm(vm.moref, host::LockMode::Wait).unwrap();
    env.ok("vcbRestore", &["-s", dest.to_str().unwrap(), "-l", "abort"]);
    let h = env.host();
    let vm = h.find_vm("sus").unwrap();
    assert_eq!(vm.power_state(&h), host::PowerState::Suspended);
    assert_eq!(
        std::fs::read(vm.dir.join("sus.vmss")).unwrap(),
        b"saved memory"
    );
}
