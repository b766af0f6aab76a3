//! Backup catalogs built from a .vmx, written, and read back by a restore.

use vmx::{
    validate_relative_name, Catalog, CatalogDisk, CatalogFile, DatastorePath, Dict, Error,
    PowerState, Style, VmConfig,
};

use crate::samples::ESX_VMX;

/// What a full-VM backup of the sample VM writes.
fn backup_catalog() -> Catalog {
    let vm = VmConfig::from_dict(&Dict::parse(ESX_VMX).unwrap()).unwrap();
    let vmx_path: DatastorePath = "[datastore1] vm37/vm37.vmx".parse().unwrap();
    let folder = vmx_path.parent().unwrap();
    let mut c = Catalog::new(vm.display_name().unwrap(), PowerState::PoweredOn);
    c.uuid = vm.uuid_bios();
    c.host = Some("esx1.example.com".into());
    c.ipaddr = vm.guest_ip().map(str::to_owned);
    c.folder_path = Some("/ha-datacenter/vm/Production".into());
    c.config_suspend_dir = Some(folder.clone());
    c.config_log_dir = Some(folder.clone());
    c.config_vmx = Some(vmx_path);
    c.timestamp_unix_secs = Some(1_700_000_000);
    c.tool_version = Some("vcb 0.1.0".into());
    c.quiesced = Some(true);
    c.files.push(CatalogFile {
        name: "vm37.vmx".into(),
        size_bytes: u64::try_from(ESX_VMX.len()).unwrap(),
        sha256: [1; 32],
    });
    for disk in vm.disks() {
        let mut entry = CatalogDisk::new(disk.node);
        entry.diskname = Some(match disk.file_name.parse::<DatastorePath>() {
            Ok(path) => path,
            Err(_) => folder.join(&disk.file_name).unwrap(),
        });
        if disk.file_name.contains("rdmp") {
            entry.backed_up = false;
            entry.reason = Some("physical compatibility RDM".into());
            entry.rdm_device = Some("vml.0200000000600508b1001c".into());
        } else {
            let name = format!(
                "{}-{}",
                disk.node.file_prefix(),
                disk.file_name.rsplit('/').next().unwrap()
            );
            entry.filename = Some(name.clone());
            entry.format = Some("thin".into());
            entry.capacity_bytes = Some(8 << 30);
            c.files.push(CatalogFile {
                name,
                size_bytes: 8 << 30,
                sha256: [2; 32],
            });
        }
        c.disks.push(entry);
    }
    c
}

#[test]
fn catalog_round_trips_through_text() {
    let c = backup_catalog();
    let dict = c.to_dict().unwrap();
    assert_eq!(dict.style(), Style::Catalog);
    let text = dict.to_string();
    assert!(text.starts_with("version= 1\nstate= poweredOn\ndisplay name= \"vm37 |22prod|22\"\n"));
    assert!(text.contains("disk.scsi0:1.diskname= \"[datastore2] vm37/vm37_1.vmdk\"\n"));
    assert!(text.contains("disk.scsi1:0.backedup= \"no\"\n"));
    assert!(text.contains("file.1.name= \"scsi0-0-vm37.vmdk\"\n"));

    let restored = Catalog::from_dict(&Dict::parse(&text).unwrap()).unwrap();
    assert_eq!(restored.display_name, "vm37 \"prod\"");
    assert_eq!(restored.uuid, c.uuid);
    assert_eq!(restored.disks, c.disks);
    assert_eq!(restored.files, c.files);
    assert_eq!(restored.config_vmx, c.config_vmx);
    assert_eq!(restored.to_dict().unwrap().to_string(), text);
    for file in &restored.files {
        validate_relative_name(&file.name).unwrap();
    }
}

#[test]
fn a_restore_refuses_a_tampered_catalog() {
    let text = backup_catalog().to_dict().unwrap().to_string();
    for (from, to) in [
        (
            "file.0.name= \"vm37.vmx\"",
            "file.0.name= \"../../root/.ssh/authorized_keys\"",
        ),
        ("file.0.name= \"vm37.vmx\"", "file.0.name= \"/etc/shadow\""),
        (
            "disk.scsi0:0.filename= \"scsi0-0-vm37.vmdk\"",
            "disk.scsi0:0.filename= \"a/../../b\"",
        ),
        (
            "config.vmx= \"[datastore1] vm37/vm37.vmx\"",
            "config.vmx= \"[datastore1] ../x.vmx\"",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let tampered = text.replace(from, to);
        let err = Catalog::from_dict(&Dict::parse(&tampered).unwrap()).unwrap_err();
        assert!(matches!(err, Error::InvalidValue { .. }), "{to}: {err}");
    }
    let future = text.replacen("version= 1", "version= 2", 1);
    let err = Catalog::from_dict(&Dict::parse(&future).unwrap()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { .. }));
}
