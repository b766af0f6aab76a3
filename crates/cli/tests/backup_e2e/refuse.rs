//! What backup and restore refuse: tampered backups, escaping catalog paths, incomplete
//! backups, existing destinations, physical RDMs without --skip-physical-rdm, failing
//! pre-freeze hooks, file-level mode.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

fn backed_up(env: &Env) -> std::path::PathBuf {
    env.vm("vm1", &[(2 * MB, DiskFormat::Thin)], 5);
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    dest
}

fn destroy(env: &Env, spec: &str) {
    let mut h = env.host();
    let vm = h.find_vm(spec).unwrap();
    h.destroy_vm(vm.moref, host::LockMode::Wait).unwrap();
}

#[test]
fn tampered_backup_is_refused_and_names_the_file() {
    let env = Env::new();
    let dest = backed_up(&env);
    destroy(&env, "vm1");
    let extent = dest.join("scsi0-0-0-vm1-s001.vmdk");
    let mut bytes = std::fs::read(&extent).unwrap();
    let i = bytes.len() - 100;
    bytes[i] ^= 0x40;
    std::fs::write(&extent, bytes).unwrap();
    let before = walk(&env.root);
    let err = env.fails(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(
        err.contains("scsi0-0-0-vm1-s001.vmdk") && err.contains("sha256 mismatch"),
        "{err}"
    );
    assert_eq!(walk(&env.root), before, "nothing may be written");
}

#[test]
fn catalog_paths_that_escape_are_refused_before_anything_is_written() {
    let env = Env::new();
    let dest = backed_up(&env);
    destroy(&env, "vm1");
    let d = dest.to_str().unwrap();
    let before = walk(&env.root);
    let text = std::fs::read_to_string(dest.join("catalog")).unwrap();

    // `..` in a datastore path of an alternate catalog.
    let alt = env.path("alt");
    std::fs::write(
        &alt,
        text.replace(
            "[datastore1] vm1/vm1.vmx",
            "[datastore1] ../../outside/vm1.vmx",
        ),
    )
    .unwrap();
    let err = env.fails(
        "vcbRestore",
        &["-s", d, "-a", alt.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(err.contains(".."), "{err}");
    std::fs::write(
        &alt,
        text.replace("[datastore1] vm1/vm1.vmdk", "[datastore1] vm1/../../x.vmdk"),
    )
    .unwrap();
    let err = env.fails(
        "vcbRestore",
        &["-s", d, "-a", alt.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(err.contains(".."), "{err}");

    // A symbolic link inside the datastore leading out of it.
    let outside = env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let ds = env.root.join("volumes/datastore1");
    std::os::unix::fs::symlink(&outside, ds.join("escape")).unwrap();
    std::fs::write(
        &alt,
        text.replace("[datastore1] vm1/", "[datastore1] escape/vm1/"),
    )
    .unwrap();
    let err = env.fails(
        "vcbRestore",
        &["-s", d, "-a", alt.to_str().unwrap(), "-l", "overwrite"],
    );
    assert!(err.contains("leaves datastore"), "{err}");
    assert!(walk(&outside).is_empty());
    std::fs::remove_file(ds.join("escape")).unwrap();

    // `../` file names in the backup's own catalog.
    std::fs::write(
        dest.join("catalog"),
        text.replace("file.0.name= \"vm1.vmx\"", "file.0.name= \"../vm1.vmx\""),
    )
    .unwrap();
    let err = env.fails("vcbRestore", &["-s", d, "-l", "overwrite"]);
    assert!(err.contains(".."), "{err}");
    assert_eq!(walk(&env.root), before, "nothing may be written");
}

#[test]
fn incomplete_backup_and_existing_destination_are_refused() {
    let env = Env::new();
    let dest = backed_up(&env);
    let d = dest.to_str().unwrap();
    let err = env.fails("vcbMounter", &["-a", "name:vm1", "-r", d]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fails(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            env.path("no/such/parent").to_str().unwrap(),
        ],
    );
    assert!(err.contains("parent folder"), "{err}");
    std::fs::write(dest.join(backup::INCOMPLETE_MARKER), "").unwrap();
    let err = env.fails("vcbRestore", &["-s", d, "-l", "overwrite"]);
    assert!(err.contains("incomplete"), "{err}");
    std::fs::remove_file(dest.join(backup::INCOMPLETE_MARKER)).unwrap();
    std::fs::remove_file(dest.join("catalog")).unwrap();
    let err = env.fails(
        "vcbRestore",
        &["-s", &format!("file://{d}"), "-l", "overwrite"],
    );
    assert!(err.contains("no catalog"), "{err}");
    // scp:// is supported (issue 5): an unreachable server is a clear error.
    let err = env.fails(
        "vcbMounter",
        &["-a", "name:vm1", "-r", "scp://u@127.0.0.1:1:/x"],
    );
    assert!(err.contains("cannot connect"), "{err}");
    let err = env.fails("vcbMounter", &["-a", "name:vm1", "-r", "scp://u@:/x"]);
    assert!(err.contains("not a usable remote URL"), "{err}");
    // File-level mounts go under a local folder; an unknown type is refused.
    let err = env.fails(
        "vcbMounter",
        &["-a", "name:vm1", "-r", "scp://host:/x", "-t", "file"],
    );
    assert!(err.contains("mounts under a local folder"), "{err}");
    let err = env.fails(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            env.path("f").to_str().unwrap(),
            "-t",
            "fullvmx",
        ],
    );
    assert!(err.contains("expected fullvm or file"), "{err}");
    assert!(!env.path("f").exists());
}

#[test]
fn physical_rdm_stops_the_backup_unless_skipped_and_restore_recreates_it() {
    let env = Env::new();
    let device = env.path("lun0");
    std::fs::write(&device, vec![0x5a; MB as usize]).unwrap();
    let vdevice = env.path("lun1");
    std::fs::write(&vdevice, vec![0x3c; MB as usize]).unwrap();
    let mut h = env.host();
    let mut spec = host::VmSpec::new("db");
    spec.format = DiskFormat::Thin;
    spec.disks.push(host::DiskSource::New {
        capacity_bytes: 2 * MB,
    });
    spec.disks.push(host::DiskSource::Rdm {
        device: device.clone(),
        physical: true,
    });
    spec.disks.push(host::DiskSource::Rdm {
        device: vdevice.clone(),
        physical: false,
    });
    let vm = h.create_vm(&spec, &mut ()).unwrap();
    let vmsd = vm.vmsd_path();

    let dest = env.path("b");
    let err = env.fails(
        "vcbMounter",
        &["-a", "name:db", "-r", dest.to_str().unwrap()],
    );
    assert!(
        err.contains("physical-compatibility RDM") && err.contains("lun0"),
        "{err}"
    );
    assert!(
        !dest.exists() && !vmsd.exists(),
        "nothing happened before the refusal"
    );

    let out = env.ok(
        "vcbMounter",
        &[
            "-a",
            "name:db",
            "-r",
            dest.to_str().unwrap(),
            "--skip-physical-rdm",
        ],
    );
    assert!(out.contains("Skipped disk scsi0:1"), "{out}");
    let c = catalog(&dest);
    assert!(
        !c.disks[1].backed_up && c.disks[1].rdm_device.as_deref() == Some(device.to_str().unwrap())
    );
    assert_eq!(
        content(&dest.join("scsi0-2-0-db_2.vmdk")),
        vec![0x3c; MB as usize],
        "a virtual RDM is exported like a disk"
    );

    destroy(&env, "db");
    // Issue 10: a catalog naming a device maps it only when asked to.
    let out = env.ok_all("vcbRestore", &["-s", dest.to_str().unwrap(), "-l", "abort"]);
    assert!(out.contains("--allow-rdm"), "{out}");
    assert!(!env.root.join("volumes/datastore1/db/db_1.vmdk").exists());
    destroy(&env, "db");
    let out = env.ok_all(
        "vcbRestore",
        &["-s", dest.to_str().unwrap(), "-l", "abort", "--allow-rdm"],
    );
    assert!(out.contains(device.to_str().unwrap()), "{out}");
    let (mode, target) =
        vmdk::rdm_target(&env.root.join("volumes/datastore1/db/db_1.vmdk")).unwrap();
    assert_eq!((mode, target), (vmdk::RdmMode::Physical, device));
}

#[test]
fn failing_pre_freeze_hook_aborts_before_the_snapshot() {
    let env = Env::new();
    let vm = env.vm("vm1", &[(MB, DiskFormat::Thin)], 1);
    let hooks = env.root.join("hooks/pre-freeze.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let log = env.path("hook.log");
    let hook = hooks.join("10-app");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$1 $VCB_VM_NAME $VCB_VM_FOLDER\" >> {}\nexit ${{HOOK_EXIT:-0}}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = env.path("b");
    let out = env.run_env(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
        &[("HOOK_EXIT", "4")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("10-app"),
        "{}",
        text(&out.stderr)
    );
    assert!(!vm.vmsd_path().exists(), "no snapshot was taken");
    assert!(
        !dest.exists(),
        "the destination of a failed backup is removed"
    );
    env.ok(
        "vcbMounter",
        &["-a", "name:vm1", "-r", dest.to_str().unwrap()],
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.starts_with(&format!("pre-freeze vm1 {}", vm.dir.display())),
        "{logged}"
    );
}
