use super::*;
use crate::{ContainerKind, DiskSource, LockMode, Specifier, VmSpec};

fn host() -> (tempfile::TempDir, Host) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::init(&dir.path().join("root"), "esx1").unwrap();
    (dir, host)
}

fn spec(name: &str, ip: Option<&str>) -> VmSpec {
    let mut s = VmSpec::new(name);
    s.format = vmdk::DiskFormat::Thin;
    s.disks = vec![DiskSource::New {
        capacity_bytes: 1 << 20,
    }];
    s.ip = ip.map(str::to_owned);
    s
}

#[test]
fn create_writes_an_esx_vm_folder_and_registers_it() {
    let (_d, mut host) = host();
    host.create_container(ContainerKind::Folder, "/Production")
        .unwrap();
    let mut s = spec("vm37", Some("10.17.5.31"));
    s.folder = Some("/ha-datacenter/vm/Production".into());
    s.format = vmdk::DiskFormat::ZeroedThick;
    s.disks.push(DiskSource::New {
        capacity_bytes: 2 << 20,
    });
    let vm = host.create_vm(&s, &mut ()).unwrap();
    assert_eq!(vm.moref, VmRef(16));
    assert_eq!(vm.vmx.to_string(), "[datastore1] vm37/vm37.vmx");
    assert_eq!(vm.folder, "/Production");
    let names: Vec<&str> = vm
        .config
        .disks()
        .iter()
        .map(|d| d.file_name.as_str())
        .collect();
    assert_eq!(names, ["vm37.vmdk", "vm37_1.vmdk"]);
    for f in [
        "vm37.vmx",
        "vm37.nvram",
        "vm37.vmdk",
        "vm37-flat.vmdk",
        "vm37_1.vmdk",
        "vm37_1-flat.vmdk",
    ] {
        assert!(vm.dir.join(f).is_file(), "{f}");
    }
    let (d, _) = vmdk::read_descriptor(&vm.dir.join("vm37.vmdk")).unwrap();
    assert_eq!(
        vmdk::DiskFormat::of_descriptor(&d),
        Some(vmdk::DiskFormat::ZeroedThick)
    );
    assert_eq!(vm.power_state(&host), PowerState::PoweredOff);
    assert_eq!(vm.config_files(&host).unwrap().len(), 2);
    assert!(matches!(
        host.create_vm(&s, &mut ()),
        Err(Error::DuplicateName { .. })
    ));
    let hidden: Vec<_> = std::fs::read_dir(vm.dir.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(hidden.len(), 1, "no staging folder is left");
}

#[test]
fn create_imports_disks_and_maps_devices() {
    let (dir, mut host) = host();
    let raw = dir.path().join("disk.img");
    std::fs::write(&raw, vec![0x5au8; 1 << 20]).unwrap();
    let device = dir.path().join("lun0");
    std::fs::write(&device, vec![0u8; 1 << 20]).unwrap();
    let mut s = spec("imp", None);
    s.disks = vec![
        DiskSource::Import { source: raw },
        DiskSource::Rdm {
            device: device.clone(),
            physical: false,
        },
        DiskSource::Rdm {
            device,
            physical: true,
        },
    ];
    let vm = host.create_vm(&s, &mut ()).unwrap();
    let disks = vm.disks(&host).unwrap();
    let mut d = vmdk::Disk::open(&disks[0].path, &vmdk::OpenOptions::read_only()).unwrap();
    let mut buf = vec![0u8; 4096];
    d.read_at(4096, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0x5a));
    let mut locked = host.lock_vm(vm.moref, LockMode::NoWait).unwrap();
    let snap = locked.create_snapshot("s", "").unwrap();
    assert_eq!(
        snap.disks.len(),
        2,
        "the physical-mode mapping is not snapshotted"
    );
    assert_eq!(snap.skipped.len(), 1);
}

#[test]
fn register_unregister_and_destroy() {
    let (_d, mut host) = host();
    let a = host.create_vm(&spec("a", None), &mut ()).unwrap();
    let b = host.create_vm(&spec("b", None), &mut ()).unwrap();
    assert_eq!(b.moref, VmRef(17));
    assert!(matches!(
        host.register_vm(&a.vmx, None, None),
        Err(Error::AlreadyRegistered { moref: 16, .. })
    ));
    host.unregister_vm(a.moref, LockMode::NoWait).unwrap();
    assert_eq!(
        host.find_vm("b").unwrap().moref,
        VmRef(17),
        "issue 10: morefs stay when another VM is unregistered"
    );
    let again = host.register_vm(&a.vmx, None, Some("/")).unwrap();
    assert_eq!(again.moref, VmRef(18), "and are never reused");
    assert!(matches!(
        host.register_vm(&a.vmx, Some("/nope"), None),
        Err(Error::UnknownContainer { .. })
    ));
    let mut locked = host.lock_vm(again.moref, LockMode::NoWait).unwrap();
    locked.create_snapshot("s", "").unwrap();
    drop(locked);
    let gone = host.destroy_vm(again.moref, LockMode::NoWait).unwrap();
    assert!(gone.left.is_empty(), "{gone:?}");
    assert!(gone.deleted.len() >= 6, "{gone:?}");
    assert!(!a.dir.exists());
    assert_eq!(host.entries().len(), 1);
}

#[test]
fn register_refuses_hostile_vmx() {
    let (_d, mut host) = host();
    let vm = host.create_vm(&spec("h", None), &mut ()).unwrap();
    host.unregister_vm(vm.moref, LockMode::NoWait).unwrap();
    let text = std::fs::read_to_string(&vm.vmx_path).unwrap();
    std::fs::write(&vm.vmx_path, text.replace("\"h.vmdk\"", "\"/etc/shadow\"")).unwrap();
    let e = host.register_vm(&vm.vmx, None, None).unwrap_err();
    assert!(matches!(e, Error::OutsideDatastores { .. }), "{e}");
    assert!(host.entries().is_empty());
}

#[test]
fn suspended_state_comes_from_the_vmss_file() {
    let (_d, mut host) = host();
    let vm = host.create_vm(&spec("s", None), &mut ()).unwrap();
    std::fs::write(vm.dir.join("s-1a2b.vmss"), "").unwrap();
    assert_eq!(vm.power_state(&host), PowerState::Suspended);
    // A pid file no live QEMU of this folder owns (left by a crash) is stale: the VM is
    // still suspended, and the stale file is cleared.
    let pid_file = vm.dir.join(runtime::PID_FILE);
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    assert_eq!(vm.power_state(&host), PowerState::Suspended);
    assert!(!pid_file.exists());
    assert_eq!(vm.guest_ips(&host), Vec::<String>::new());
    let mut locked = host.lock_vm(vm.moref, LockMode::NoWait).unwrap();
    let uid = locked.create_snapshot("x", "").unwrap().uid;
    let e = locked.revert_to_snapshot(uid, &mut ()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongPowerState {
                state: PowerState::Suspended,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn specifiers_find_vms() {
    let (_d, mut host) = host();
    let a = host
        .create_vm(&spec("alpha", Some("10.1.1.1")), &mut ())
        .unwrap();
    let b = host.create_vm(&spec("beta", None), &mut ()).unwrap();
    std::fs::write(b.dir.join("beta.vmss"), "").unwrap();
    let find = |s: &str| Specifier::parse(s).unwrap().find(&host).unwrap();
    assert_eq!(find("any:"), [a.moref, b.moref]);
    assert!(find("none:").is_empty());
    assert_eq!(find("name:alpha"), [a.moref]);
    assert!(find("name:Alpha").is_empty());
    assert_eq!(
        find(&format!("uuid:{}", a.uuid().unwrap().to_vmx_string())),
        [a.moref]
    );
    assert_eq!(find("moref:17"), [b.moref]);
    assert_eq!(find("moref:[datastore1] beta/beta.vmx"), [b.moref]);
    assert_eq!(find(&format!("moref:{}", a.vmx_path.display())), [a.moref]);
    assert_eq!(find("powerstate:suspended"), [b.moref]);
    assert_eq!(find("powerstate:off"), [a.moref]);
    assert!(find("powerstate:on").is_empty());
    assert_eq!(find("ipaddr:10.1.1.1"), [a.moref]);
    assert!(find("ipaddr:10.9.9.9").is_empty());
    // The name cache finds a VM whose .vmx carries no address.
    crate::namecache::record(
        host.name_cache_path(),
        "beta",
        b.uuid().as_ref(),
        Some("127.0.0.1"),
    )
    .unwrap();
    assert_eq!(find("ipaddr:localhost"), [b.moref]);
    assert!(matches!(
        host.find_vm("gamma"),
        Err(Error::VmNotFound { .. })
    ));
    assert!(matches!(
        host.find_vm("any:"),
        Err(Error::AmbiguousVm { count: 2, .. })
    ));
    assert_eq!(host.find_vm("moref:16").unwrap().name(), "alpha");
}

#[test]
fn resolve_name_confines_files() {
    let (_d, mut host) = host();
    let vm = host.create_vm(&spec("c", None), &mut ()).unwrap();
    let ds = host.datastore("datastore1").unwrap().path;
    assert_eq!(
        vm.resolve_name(&host, "c.vmdk").unwrap(),
        vm.dir.join("c.vmdk")
    );
    assert_eq!(
        vm.resolve_name(&host, "[datastore1] c/c.vmdk").unwrap(),
        vm.dir.join("c.vmdk")
    );
    assert_eq!(
        vm.resolve_name(&host, "/vmfs/volumes/datastore1/c/c.vmdk")
            .unwrap(),
        vm.dir.join("c.vmdk")
    );
    let abs = std::fs::canonicalize(&ds).unwrap().join("c/c.vmdk");
    assert_eq!(vm.resolve_name(&host, abs.to_str().unwrap()).unwrap(), abs);
    assert_eq!(vm.ref_name(&host, &abs), "c.vmdk");
    for bad in ["/etc/passwd", "../../../etc/passwd", "[nope] x.vmdk"] {
        assert!(vm.resolve_name(&host, bad).is_err(), "{bad}");
    }
    std::os::unix::fs::symlink("/etc", vm.dir.join("escape")).unwrap();
    let e = vm.resolve_name(&host, "escape/passwd").unwrap_err();
    assert!(matches!(e, Error::OutsideDatastores { .. }), "{e}");
}

#[test]
fn error_variants_of_vm_operations() {
    let (_d, mut host) = host();
    assert!(matches!(
        host.vm(VmRef(99)),
        Err(Error::NotRegistered { moref: 99 })
    ));
    let mut s = spec("nodisk", None);
    s.datastore = Some("nope".into());
    assert!(matches!(
        host.create_vm(&s, &mut ()),
        Err(Error::UnknownDatastore { .. })
    ));
    s.datastore = None;
    s.disks.clear();
    let vm = host.create_vm(&s, &mut ()).unwrap();
    let mut locked = host.lock_vm(vm.moref, LockMode::NoWait).unwrap();
    assert!(matches!(
        locked.create_snapshot("x", ""),
        Err(Error::NothingToSnapshot { .. })
    ));
    drop(locked);
    assert!(matches!(
        host.remove_datastore("datastore1"),
        Err(Error::DatastoreInUse { count: 1, .. })
    ));
    std::fs::create_dir(vm.dir.parent().unwrap().join("taken")).unwrap();
    assert!(matches!(
        host.create_vm(&spec("taken", None), &mut ()),
        Err(Error::AlreadyExists { .. })
    ));
    // A chain whose parent is gone: every snapshot operation refuses before changing anything.
    let d = host.create_vm(&spec("broken", None), &mut ()).unwrap();
    host.lock_vm(d.moref, LockMode::NoWait)
        .unwrap()
        .create_snapshot("s", "")
        .unwrap();
    std::fs::remove_file(d.dir.join("broken.vmdk")).unwrap();
    let mut locked = host.lock_vm(d.moref, LockMode::NoWait).unwrap();
    let e = locked.remove_all_snapshots(&mut ()).unwrap_err();
    assert!(matches!(e, Error::Disk { .. }), "{e}");
    assert_eq!(
        crate::read_vmsd(&d.vmsd_path()).unwrap().snapshots().len(),
        1
    );
}
