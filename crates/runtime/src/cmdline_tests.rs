use super::*;

/// A policy like the host's for a host whose one datastore is `/` (tests only).
#[derive(Debug)]
struct Anywhere;

impl crate::paths::PathPolicy for Anywhere {
    fn resolve(
        &self,
        folder: &Path,
        _key: &str,
        name: &str,
    ) -> std::result::Result<PathBuf, String> {
        Ok(folder.join(name))
    }
}

fn command(text: &str, accel: Accel, incoming: bool) -> Result<QemuCommand> {
    command_with(text, accel, incoming, Some(&Anywhere))
}

fn command_with(
    text: &str,
    accel: Accel,
    incoming: bool,
    policy: Option<&dyn crate::paths::PathPolicy>,
) -> Result<QemuCommand> {
    let cfg = VmConfig::from_dict(&vmx::Dict::parse(text).unwrap()).unwrap();
    let files = VmFiles::new(Path::new("/ds/vm,1/vm.vmx"), Some(&cfg)).unwrap();
    let datastores = BTreeMap::new();
    build(
        &cfg,
        &BuildInput {
            files: &files,
            datastores: &datastores,
            policy,
            program: "qemu-system-x86_64",
            accel,
            incoming,
            extra_args: &[],
        },
    )
}

/// The value after each occurrence of `flag`.
fn values<'a>(c: &'a QemuCommand, flag: &str) -> Vec<&'a str> {
    c.args
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

const VMX: &str = r#"displayName = "web, 1"
memsize = "256"
numvcpus = "1"
uuid.bios = "56 4d 78 a1 8c 1c 59 b4-fa 02 be 14 13 87 97 be"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "vm.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "/abs/data.vmdk"
scsi1.present = "TRUE"
scsi1.virtualDev = "virtio-blk"
scsi1:0.present = "TRUE"
scsi1:0.fileName = "fast.vmdk"
ide0:1.present = "TRUE"
ide0:1.fileName = "old.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "x.iso"
serial0.present = "TRUE"
serial0.fileType = "file"
serial0.fileName = "serial.log"
serial1.present = "TRUE"
serial1.fileType = "pipe"
serial1.fileName = "/tmp/p"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.generatedAddress = "00:50:56:91:48:c7"
vcb.kernel = "boot/vmlinuz"
vcb.initrd = "/boot/initrd.gz"
vcb.append = "console=ttyS0 quiet"
vcb.guestAgent = "TRUE"
"#;

#[test]
fn maps_a_vmx_to_qemu() {
    let c = command(VMX, Accel::Tcg, false).unwrap();
    assert_eq!(values(&c, "-m"), ["256M"]);
    assert_eq!(values(&c, "-smp"), ["1"]);
    assert_eq!(values(&c, "-accel"), ["tcg"]);
    assert_eq!(values(&c, "-name"), ["guest=web,, 1"]);
    assert_eq!(
        values(&c, "-uuid"),
        ["564d78a1-8c1c-59b4-fa02-be14138797be"]
    );
    assert_eq!(values(&c, "-kernel"), ["/ds/vm,1/boot/vmlinuz"]);
    assert_eq!(values(&c, "-initrd"), ["/boot/initrd.gz"]);
    assert_eq!(values(&c, "-append"), ["console=ttyS0 quiet"]);
    assert_eq!(values(&c, "-pidfile"), [".vcb-qemu.pid"]);
    let devices = values(&c, "-device");
    assert!(devices.contains(&"pvscsi,id=scsi0"), "{devices:?}");
    assert_eq!(
        devices.iter().filter(|d| d.starts_with("pvscsi")).count(),
        1
    );
    assert!(devices.contains(
        &"scsi-hd,drive=scsi0-1,bus=scsi0.0,scsi-id=1,lun=0,id=disk-scsi0-1,bootindex=2"
    ));
    assert!(devices.contains(&"virtio-blk-pci,drive=scsi1-0,id=disk-scsi1-0,bootindex=3"));
    assert!(devices.contains(&"ide-hd,drive=ide0-1,bus=ide.0,unit=1,id=disk-ide0-1,bootindex=4"));
    assert!(devices.contains(&"isa-serial,chardev=serial0,index=0"));
    assert!(devices.contains(&"vmxnet3,netdev=net0,id=ethernet0,mac=00:50:56:91:48:c7"));
    assert!(devices
        .iter()
        .any(|d| d.contains("name=org.qemu.guest_agent.0")));
    let blockdevs = values(&c, "-blockdev");
    assert_eq!(blockdevs.len(), 8);
    let file: serde_json::Value = serde_json::from_str(blockdevs[0]).unwrap();
    assert_eq!(file["filename"], "/ds/vm,1/vm.vmdk");
    assert_eq!(file["node-name"], "scsi0-0-file");
    let fmt: serde_json::Value = serde_json::from_str(blockdevs[1]).unwrap();
    assert_eq!(fmt["driver"], "vmdk");
    assert_eq!(fmt["node-name"], "scsi0-0");
    let chardevs = values(&c, "-chardev");
    assert!(chardevs.contains(&"file,id=serial0,path=/ds/vm,,1/serial.log,append=on"));
    assert!(c.guest_agent);
    assert_eq!(c.disks.len(), 4);
    assert_eq!(c.disks[1].path, Path::new("/abs/data.vmdk"));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(values(&c, "-incoming").is_empty());
    assert!(c.to_shell().contains("'guest=web,, 1'"));
}

#[test]
fn incoming_and_defaults() {
    let text = "scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n";
    let c = command(text, Accel::Kvm, true).unwrap();
    assert_eq!(values(&c, "-incoming"), ["defer"]);
    assert_eq!(values(&c, "-accel"), ["kvm"]);
    assert_eq!(values(&c, "-m"), ["256M"]);
    assert!(values(&c, "-device").contains(&"lsi53c895a,id=scsi0"));
    assert!(!c.guest_agent);
    assert!(values(&c, "-netdev").is_empty());
}

#[test]
fn sata_and_nvme_controllers() {
    let text = "sata0:2.present = \"TRUE\"\nsata0:2.fileName = \"a.vmdk\"\n\
                nvme0:0.present = \"TRUE\"\nnvme0:0.fileName = \"b.vmdk\"\n\
                scsi0.virtualDev = \"lsisas1068\"\nscsi0:3.present = \"TRUE\"\n\
                scsi0:3.fileName = \"c.vmdk\"\n";
    let c = command(text, Accel::Tcg, false).unwrap();
    let devices = values(&c, "-device");
    for d in [
        "ich9-ahci,id=sata0",
        "nvme,id=nvme0,serial=vcb-nvme0",
        "mptsas1068,id=scsi0",
        "nvme-ns,drive=nvme0-0,bus=nvme0,nsid=1,id=disk-nvme0-0,bootindex=3",
        "ide-hd,drive=sata0-2,bus=sata0.2,id=disk-sata0-2,bootindex=2",
    ] {
        assert!(devices.contains(&d), "{d} not in {devices:?}");
    }
}

#[test]
fn error_unsupported() {
    for text in [
        "scsi0.virtualDev = \"weird\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n",
        "scsi0:7.present = \"TRUE\"\nscsi0:7.fileName = \"a.vmdk\"\n",
        "ide2:0.present = \"TRUE\"\nide2:0.fileName = \"a.vmdk\"\n",
        "scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"../a.vmdk\"\n",
        "vcb.kernel = \"../../k\"\n",
    ] {
        let err = command_with(text, Accel::Tcg, false, None).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{text}: {err}");
    }
}

#[test]
fn quotes_for_the_shell() {
    assert_eq!(shell_quote("a,b=c/d"), "a,b=c/d");
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(shell_quote(""), "''");
}

#[test]
fn issue_10_hostile_vmx_paths_are_refused_without_the_hosts_policy() {
    // Without a policy only names inside the VM folder resolve: a serial port, kernel
    // or disk naming a host file is refused before QEMU could open or create it.
    for (key, value) in [
        ("serial0.fileName", "/some/host/file"),
        ("vcb.initrd", "/etc/shadow"),
        ("vcb.kernel", "../../boot/vmlinuz"),
        ("scsi0:0.fileName", "/dev/sda"),
    ] {
        let base = "scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nserial0.present = \"TRUE\"\nserial0.fileType = \"file\"\n";
        let mut text = format!("{base}{key} = \"{value}\"\n");
        for (k, v) in [
            ("scsi0:0.fileName", "vm.vmdk"),
            ("serial0.fileName", "s.log"),
        ] {
            if k != key {
                text.push_str(&format!("{k} = \"{v}\"\n"));
            }
        }
        let e = command_with(&text, Accel::Tcg, false, None).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{key}: {e}");
        assert!(e.to_string().contains(key), "{e}");
    }
}

#[test]
fn qemu_runs_sandboxed() {
    let c = command(VMX, Accel::Tcg, false).unwrap();
    let sandbox = values(&c, "-sandbox");
    assert_eq!(sandbox.len(), 1);
    for part in [
        "on",
        "elevateprivileges=deny",
        "spawn=deny",
        "resourcecontrol=deny",
    ] {
        assert!(sandbox[0].split(',').any(|p| p == part), "{}", sandbox[0]);
    }
}
