//! Issue 10: hostile backups and catalogs, and restores racing other operations.

use crate::util::*;
use std::time::{Duration, Instant};
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

/// vm1 backed up into `b`, and vm2 beside it (the victim of hostile catalogs).
fn two_vms(env: &Env) -> (std::path::PathBuf, host::Vm) {
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 3);
    let vm2 = env.vm("vm2", &[(2 * MB, DiskFormat::Thin)], 7);
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    (dest, vm2)
}

/// Replaces the backup file `name` with `data` and records it in the catalog, as an
/// attacker who can write the backup folder would.
fn forge(dest: &std::path::Path, name: &str, data: &[u8]) {
    std::fs::write(dest.join(name), data).unwrap();
    let mut c = catalog(dest);
    let (size, sum) = backup::hash::hash_file(&dest.join(name)).unwrap();
    match c.files.iter_mut().find(|f| f.name == name) {
        Some(f) => {
            f.size_bytes = size;
            f.sha256 = sum;
        }
        None => c.files.push(vmx::CatalogFile {
            name: name.to_owned(),
            size_bytes: size,
            sha256: sum,
        }),
    }
    write_catalog(&dest.join("catalog"), &c);
}

fn restore_fails(env: &Env, dest: &std::path::Path) -> String {
    env.fails(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "overwrite"],
    )
}

#[test]
fn issue_10_a_catalog_naming_another_vms_disk_changes_nothing() {
    let env = Env::new();
    let (dest, vm2) = two_vms(&env);
    let victim = disk_paths(&env, "vm2");
    let before: Vec<Vec<u8>> = victim.iter().map(|p| content(p)).collect();
    let mut c = catalog(&dest);
    c.disks[0].diskname = Some("[datastore1] vm2/vm2.vmdk".parse().unwrap());
    write_catalog(&dest.join("catalog"), &c);
    let err = restore_fails(&env, &dest);
    assert!(err.contains("belongs to registered VM"), "{err}");
    // The .vmx going into the other VM's folder is refused the same way.
    let mut c = catalog(&dest);
    c.disks[0].diskname = None;
    c.config_vmx = Some("[datastore1] vm2/vm1.vmx".parse().unwrap());
    write_catalog(&dest.join("catalog"), &c);
    let err = restore_fails(&env, &dest);
    assert!(err.contains("belongs to registered VM"), "{err}");
    let after: Vec<Vec<u8>> = victim.iter().map(|p| content(p)).collect();
    assert!(before == after, "vm2's disk is intact");
    assert!(!vm2.dir.join("vm1.vmx").exists());
}

#[test]
fn issue_10_unlisted_disks_reserved_names_and_foreign_vmx_paths_are_refused() {
    let env = Env::new();
    let (dest, vm2) = two_vms(&env);
    let vmx = std::fs::read_to_string(dest.join("vm1.vmx")).unwrap();
    // A second disk the catalog does not list, pointing at vm2's disk.
    let extra = format!(
        "{vmx}scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"[datastore1] vm2/vm2.vmdk\"\n"
    );
    forge(&dest, "vm1.vmx", extra.as_bytes());
    let err = restore_fails(&env, &dest);
    assert!(err.contains("does not list"), "{err}");
    // A serial port writing into vm2's flat extent.
    let serial = format!("{vmx}serial0.present = \"TRUE\"\nserial0.fileType = \"file\"\nserial0.fileName = \"[datastore1] vm2/vm2-flat.vmdk\"\n");
    forge(&dest, "vm1.vmx", serial.as_bytes());
    let err = restore_fails(&env, &dest);
    assert!(
        err.contains("serial0.fileName") && err.contains("vm2"),
        "{err}"
    );
    // vcb's own control files are never restored.
    forge(&dest, "vm1.vmx", vmx.as_bytes());
    forge(&dest, ".vcb-journal", b"version = 1\n");
    let err = restore_fails(&env, &dest);
    assert!(err.contains("reserved"), "{err}");
    assert!(!vm2.dir.join(".vcb-journal").exists());
}

#[test]
fn issue_10_runtime_keys_leading_out_are_dropped() {
    let env = Env::new();
    let (dest, _) = two_vms(&env);
    let vmx = std::fs::read_to_string(dest.join("vm1.vmx")).unwrap();
    let keys = format!(
        "{vmx}vcb.initrd = \"/etc/shadow\"\nvcb.kernel = \"[datastore1] vm2/vm2-flat.vmdk\"\n"
    );
    forge(&dest, "vm1.vmx", keys.as_bytes());
    let h = env.host();
    let vm1 = h.find_vm("vm1").unwrap();
    h.clone()
        .destroy_vm(vm1.moref, host::LockMode::Wait)
        .unwrap();
    let out = env.ok_all("vcbRestore", &["-s", dest.to_str().unwrap(), "-l", "abort"]);
    assert!(
        out.contains("vcb.initrd dropped") && out.contains("vcb.kernel dropped"),
        "{out}"
    );
    let restored = std::fs::read_to_string(vm1.vmx_path).unwrap();
    assert!(
        !restored.contains("vcb.initrd") && !restored.contains("vcb.kernel"),
        "{restored}"
    );
}

#[test]
fn issue_10_restore_waits_for_no_backup_it_is_refused_while_one_holds_the_lock() {
    let env = Env::new();
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 5);
    let old = env.path("old");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", old.to_str().unwrap()],
    );
    let before: Vec<Vec<u8>> = disk_paths(&env, "vm1").iter().map(|p| content(p)).collect();
    let dest = env.path("b");
    let mut child = env
        .command(
            "vcbMounter",
            &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
        )
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dest.join("vm1.vmx").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "backup did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = env.fails(
        "vcbRestore",
        &["-s", old.to_str().unwrap(), "-l", "overwrite"],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(err.contains("busy"), "{err}");
    // The backup's redo log still holds the VM's state: nothing was replaced.
    let tops = disk_paths(&env, "vm1");
    assert!(
        tops[0].to_str().unwrap().ends_with("-000001.vmdk"),
        "{tops:?}"
    );
    assert_eq!(content(&tops[0]), before[0]);
}

#[test]
fn issue_10_overwrite_replaces_the_whole_vm_and_leaves_no_redo_log() {
    require_tool("qemu-img");
    let env = Env::new();
    env.vm(
        "vm1",
        &[
            (4 * MB, DiskFormat::Thin),
            (2 * MB, DiskFormat::ZeroedThick),
        ],
        9,
    );
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    env.ok("vcb", &["vm", "snapshot", "vm1", "--name", "after"]);
    write(&disk_paths(&env, "vm1")[0], 0, b"changed after the backup");
    let out = env.ok(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(out.contains("Restored"), "{out}");
    let h = env.host();
    let vm = h.find_vm("vm1").unwrap();
    let files: Vec<String> = walk(&vm.dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files
            .iter()
            .any(|f| f.contains("-00000") || f.starts_with(".vm1")),
        "{files:?}"
    );
    assert!(host::read_vmsd(&vm.vmsd_path())
        .unwrap()
        .snapshots()
        .is_empty());
    for (i, disk) in disk_paths(&env, "vm1").iter().enumerate() {
        let exported = dest.join(format!(
            "scsi0-{i}-0-vm1{}.vmdk",
            if i == 0 { "" } else { "_1" }
        ));
        qemu_same(disk, &exported);
    }
    assert!(
        !walk(&env.root).iter().any(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".vcb-s")
        }),
        "no journal or staging record left"
    );
}

#[test]
fn issue_10_a_vmx_naming_host_files_never_reaches_qemu() {
    let env = Env::new();
    let vm = env.vm("vm1", &[(MB, DiskFormat::Thin)], 2);
    let target = env.path("written-by-qemu");
    let vmx = std::fs::read_to_string(&vm.vmx_path).unwrap();
    let evil = format!(
        "{vmx}serial0.present = \"TRUE\"\nserial0.fileType = \"file\"\nserial0.fileName = \"{}\"\n",
        target.display()
    );
    std::fs::write(&vm.vmx_path, evil).unwrap();
    let err = env.fails("vcb", &["vm", "power-on", "vm1"]);
    assert!(
        err.contains("serial0.fileName") || err.contains("outside the host's datastores"),
        "{err}"
    );
    assert!(!target.exists(), "nothing was created");
    // Same for a kernel or initrd read from anywhere.
    std::fs::write(&vm.vmx_path, format!("{vmx}vcb.initrd = \"/etc/shadow\"\n")).unwrap();
    let err = env.fails("vcb", &["vm", "power-on", "vm1"]);
    assert!(err.contains("outside the host's datastores"), "{err}");
}

#[test]
fn issue_10_a_linked_clone_is_backed_up_as_a_full_image() {
    require_tool("qemu-img");
    let env = Env::new();
    let base = env.vm("base", &[(2 * MB, DiskFormat::Thin)], 8);
    let base_disk = disk_paths(&env, "base").remove(0);
    let clone_dir = env.root.join("volumes/datastore1/clone");
    std::fs::create_dir(&clone_dir).unwrap();
    vmdk::create_child(
        &base_disk,
        &clone_dir.join("clone.vmdk"),
        vmdk::ChildFormat::VmfsSparse,
    )
    .unwrap();
    let anywhere = vmdk::OpenOptions::writable().confined(vmdk::Confinement::Anywhere);
    let mut d = vmdk::Disk::open(&clone_dir.join("clone.vmdk"), &anywhere).unwrap();
    d.write_at(MB, b"the clone's own data").unwrap();
    d.close().unwrap();
    std::fs::write(
        clone_dir.join("clone.vmx"),
        "displayName = \"clone\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"clone.vmdk\"\n",
    )
    .unwrap();
    env.ok("vcb", &["vm", "register", "[datastore1] clone/clone.vmx"]);
    let before = std::fs::read(base_disk.with_file_name("base-flat.vmdk")).unwrap();
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:clone", "-r", dest.to_str().unwrap()],
    );
    // Named after the chain's base, as VCB names exports.
    qemu_same(
        &clone_dir.join("clone.vmdk"),
        &dest.join("scsi0-0-0-base.vmdk"),
    );
    assert_eq!(
        std::fs::read(base_disk.with_file_name("base-flat.vmdk")).unwrap(),
        before
    );
    let h = env.host();
    let clone = h.find_vm("clone").unwrap();
    assert_eq!(clone.disks(&h).unwrap()[0].file_name, "clone.vmdk");
    drop(base);
}

#[test]
fn issue_10_two_restores_at_once_both_finish() {
    let env = Env::new();
    env.vm("a", &[(MB, DiskFormat::Thin)], 1);
    env.vm("b", &[(MB, DiskFormat::Thin)], 2);
    for vm in ["a", "b"] {
        env.ok(
            "vcbMounter",
            &[
                "-a",
                &format!("name:{vm}"),
                "-r",
                env.path(&format!("bk-{vm}")).to_str().unwrap(),
            ],
        );
    }
    let runs: Vec<_> = ["a", "b"]
        .iter()
        .map(|vm| {
            env.command(
                "vcbRestore",
                &[
                    "-s",
                    env.path(&format!("bk-{vm}")).to_str().unwrap(),
                    "-l",
                    "overwrite",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for r in runs {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let h = env.host();
    for vm in ["a", "b"] {
        let v = h.find_vm(vm).unwrap();
        let hidden = walk(&v.dir)
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".vcb-"))
            .filter(|p| !p.ends_with(".vcb-lock"))
            .count();
        assert_eq!(hidden, 0, "{vm}");
    }
}
