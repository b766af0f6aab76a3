use super::*;

const VMX: &str = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "7"
DisplayName = "Fedora11"
guestOS = "rhel5"
memsize = "1024"
numvcpus = "2"
uuid.bios = "50 11 5e 16 9b dc 49 d7-f1 71 53 c4 d7 f9 17 10"
nvram = "Fedora11.nvram"
suspend.Directory = "/vmfs/volumes/ds2/suspend"
workingDir = "."
log.fileName = "/var/log/vms/Fedora11.log"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "Fedora11.vmdk"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:1.present = "FALSE"
scsi0:1.fileName = "old.vmdk"
ide1:0.present = "TRUE"
ide1:0.fileName = "/iso/fedora.iso"
ide1:0.deviceType = "cdrom-image"
ide0:0.present = "true"
ide0:0.fileName = "[datastore1] data/data.vmdk"
sata0:1.present = "TRUE"
sata0:1.fileName = "auto detect"
sata0:1.deviceType = "atapi-cdrom"
ethernet0.present = "TRUE"
"#;

fn config() -> VmConfig {
    VmConfig::from_dict(&Dict::parse(VMX).unwrap()).unwrap()
}

#[test]
fn reads_settings() {
    let c = config();
    assert_eq!(c.display_name(), Some("Fedora11"));
    assert_eq!(c.guest_os(), Some("rhel5"));
    assert_eq!(c.memsize_mb(), Some(1024));
    assert_eq!(c.num_vcpus(), Some(2));
    assert_eq!(
        c.uuid_bios().unwrap().to_string(),
        "50115e16-9bdc-49d7-f171-53c4d7f91710"
    );
    assert_eq!(c.nvram(), Some("Fedora11.nvram"));
    assert_eq!(c.suspend_dir(), Some("/vmfs/volumes/ds2/suspend"));
    assert_eq!(c.working_dir(), Some("."));
    assert_eq!(c.log_dir(), Some("/var/log/vms"));
    assert_eq!(c.guest_ip(), None);
}

#[test]
fn lists_only_present_disks() {
    let c = config();
    let nodes: Vec<String> = c.disks().iter().map(|d| d.node.to_string()).collect();
    assert_eq!(nodes, ["scsi0:0", "ide0:0"]);
    let d = &c.disks()[0];
    assert_eq!(d.file_name, "Fedora11.vmdk");
    assert_eq!(d.device_type.as_deref(), Some("scsi-hardDisk"));
    assert_eq!(d.virtual_dev.as_deref(), Some("pvscsi"));
    assert_eq!(c.disks()[1].virtual_dev, None);
    assert!(c.disk("ide1:0".parse().unwrap()).is_none());
}

#[test]
fn setters_edit_in_place() {
    let mut c = config();
    c.set_display_name("Fedora \"11\"").unwrap();
    c.set_guest_ip("10.17.5.31").unwrap();
    c.set_disk_file("scsi0:0".parse().unwrap(), "Fedora11-000001.vmdk")
        .unwrap();
    let uuid = Uuid::random();
    c.set_uuid_bios(uuid).unwrap();
    let text = c.to_string();
    assert!(text.contains("\nDisplayName = \"Fedora |2211|22\"\n"));
    assert!(text.contains("\nscsi0:0.fileName = \"Fedora11-000001.vmdk\"\n"));
    assert!(text.ends_with("ethernet0.present = \"TRUE\"\nguestinfo.ip = \"10.17.5.31\"\n"));
    let again = VmConfig::from_dict(&Dict::parse(&text).unwrap()).unwrap();
    assert_eq!(again.display_name(), Some("Fedora \"11\""));
    assert_eq!(again.uuid_bios(), Some(uuid));
    assert_eq!(again.disks()[0].file_name, "Fedora11-000001.vmdk");
    assert_eq!(again, c);
}

#[test]
fn add_disk_reuses_an_absent_node_and_enables_the_controller() {
    let mut c = config();
    c.add_disk("scsi0:1".parse().unwrap(), "new.vmdk").unwrap();
    c.add_disk("sata0:1".parse().unwrap(), "x.vmdk")
        .unwrap_err();
    c.add_disk("scsi1:0".parse().unwrap(), "second.vmdk")
        .unwrap();
    let nodes: Vec<String> = c.disks().iter().map(|d| d.node.to_string()).collect();
    assert_eq!(nodes, ["scsi0:0", "scsi0:1", "scsi1:0", "ide0:0"]);
    let dict = c.dict();
    assert_eq!(dict.get("scsi0:1.fileName"), Some("new.vmdk"));
    assert_eq!(dict.get("scsi1.present"), Some("TRUE"));
    assert_eq!(dict.get("scsi1:0.deviceType"), Some("scsi-hardDisk"));
    // The replaced node keeps its place in the file.
    assert_eq!(dict.line_of("scsi0:1.fileName"), Some(19));
}

#[test]
fn error_node_in_use() {
    let mut c = config();
    let node: DiskNode = "ide1:0".parse().unwrap();
    assert!(matches!(c.add_disk(node, "d.vmdk"), Err(Error::NodeInUse { node: n }) if n == node));
}

#[test]
fn error_unknown_disk() {
    let mut c = config();
    let node: DiskNode = "nvme0:0".parse().unwrap();
    assert!(matches!(
        c.set_disk_file(node, "d.vmdk"),
        Err(Error::UnknownDisk { .. })
    ));
}

#[test]
fn error_invalid_values() {
    for (text, key) in [
        ("memsize = \"1G\"\n", "memsize"),
        ("numvcpus = \"99999999999\"\n", "numvcpus"),
        ("uuid.bios = \"50 11\"\n", "uuid.bios"),
        (
            "scsi0:0.present = \"maybe\"\nscsi0:0.fileName = \"a.vmdk\"\n",
            "scsi0:0.present",
        ),
    ] {
        let err = VmConfig::from_dict(&Dict::parse(text).unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidValue { line: 1, key: ref k, .. } if k == key),
            "{text}: {err}"
        );
    }
}

#[test]
fn empty_config_is_fine() {
    let c = VmConfig::from_dict(&Dict::default()).unwrap();
    assert!(c.disks().is_empty());
    assert_eq!(c.display_name(), None);
    assert_eq!(c.into_dict(), Dict::default());
}
