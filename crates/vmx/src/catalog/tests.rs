use super::*;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn sample() -> String {
    format!(
        r#"# vcb backup catalog
version= 1
state= poweredOn
display name= "vm37"
uuid= "564d78a1-8c1c-59b4-fa02-be14138797be"
host= "esx1.example.com"
ipaddr= "10.17.5.31"
folder path= "/ha-datacenter/vm/Production"
resourcepool= "/ha-datacenter/host/esx1.example.com/Resources/Gold"
config.vmx= "[datastore1] vm37/vm37.vmx"
config.suspenddir= "[datastore1] vm37/"
config.logdir= "[datastore1] vm37/"
timestamp= 1700000000
tool version= "vcb 0.1.0"
quiesced= "yes"
disk.scsi0:0.diskname= "[datastore1] vm37/vm37.vmdk"
disk.scsi0:0.filename= "scsi0-0-0-vm37.vmdk"
disk.scsi0:0.format= "thin"
disk.scsi0:0.capacity= 8589934592
disk.scsi0:1.diskname= "[datastore1] vm37/rdm.vmdk"
disk.scsi0:1.backedup= "no"
disk.scsi0:1.reason= "physical compatibility RDM"
disk.scsi0:1.rdmdevice= "/dev/sdb"
file.0.name= "vm37.vmx"
file.0.size= 2841
file.0.sha256= "{SHA}"
file.1.name= "scsi0-0-0-vm37.vmdk"
file.1.size= 8589934592
file.1.sha256= "{}"
extra.key= "kept"
"#,
        SHA.to_uppercase()
    )
}

fn load(text: &str) -> Result<Catalog, Error> {
    Catalog::from_dict(&Dict::parse(text).unwrap())
}

fn node(s: &str) -> DiskNode {
    s.parse().unwrap()
}

#[test]
fn reads_every_field() {
    let c = load(&sample()).unwrap();
    assert_eq!(c.state, PowerState::PoweredOn);
    assert_eq!(c.display_name, "vm37");
    assert_eq!(
        c.uuid.unwrap().to_string(),
        "564d78a1-8c1c-59b4-fa02-be14138797be"
    );
    assert_eq!(c.host.as_deref(), Some("esx1.example.com"));
    assert_eq!(c.ipaddr.as_deref(), Some("10.17.5.31"));
    assert_eq!(
        c.folder_path.as_deref(),
        Some("/ha-datacenter/vm/Production")
    );
    assert!(c.resource_pool.as_deref().unwrap().ends_with("/Gold"));
    assert_eq!(c.config_vmx.as_ref().unwrap().path(), "vm37/vm37.vmx");
    assert_eq!(
        c.config_suspend_dir.as_ref().unwrap().to_string(),
        "[datastore1] vm37/"
    );
    assert_eq!(c.config_log_dir, c.config_suspend_dir);
    assert_eq!(c.timestamp_unix_secs, Some(1_700_000_000));
    assert_eq!(c.tool_version.as_deref(), Some("vcb 0.1.0"));
    assert_eq!(c.quiesced, Some(true));
    assert_eq!(c.disks.len(), 2);
    let d0 = &c.disks[0];
    assert_eq!(d0.node, node("scsi0:0"));
    assert_eq!(d0.filename.as_deref(), Some("scsi0-0-0-vm37.vmdk"));
    assert_eq!(d0.format.as_deref(), Some("thin"));
    assert_eq!(d0.capacity_bytes, Some(8 << 30));
    assert!(d0.backed_up);
    let d1 = &c.disks[1];
    assert!(!d1.backed_up);
    assert_eq!(d1.filename, None);
    assert_eq!(d1.reason.as_deref(), Some("physical compatibility RDM"));
    assert_eq!(d1.rdm_device.as_deref(), Some("/dev/sdb"));
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.file("vm37.vmx").unwrap().size_bytes, 2841);
    assert_eq!(c.files[1].sha256_hex(), SHA);
}

#[test]
fn unmodified_catalog_writes_back_its_text_but_canonical_hashes() {
    let text = sample();
    let c = load(&text).unwrap();
    let written = c.to_dict().unwrap().to_string();
    assert_eq!(written, text.replace(&SHA.to_uppercase(), SHA));
}

#[test]
fn read_modify_write_keeps_comments_and_unknown_keys() {
    let mut c = load(&sample()).unwrap();
    c.state = PowerState::Suspended;
    c.quiesced = None;
    c.disks.retain(|d| d.backed_up);
    c.files.remove(0);
    let text = c.to_dict().unwrap().to_string();
    assert!(text.starts_with("# vcb backup catalog\nversion= 1\nstate= suspended\n"));
    assert!(!text.contains("quiesced"));
    assert!(!text.contains("scsi0:1"));
    assert!(text.contains("file.0.name= \"scsi0-0-0-vm37.vmdk\"\nfile.0.size= 8589934592\n"));
    assert!(!text.contains("file.1."));
    assert!(text.ends_with("extra.key= \"kept\"\n"));
    let again = load(&text).unwrap();
    assert_eq!(again.files, c.files);
    assert_eq!(again.disks, c.disks);
}

#[test]
fn new_catalog_writes_the_documented_layout() {
    let mut c = Catalog::new("vm \"37\"", PowerState::PoweredOff);
    c.config_vmx = Some("[ds] vm37/vm37.vmx".parse().unwrap());
    c.timestamp_unix_secs = Some(5);
    c.quiesced = Some(false);
    let mut disk = CatalogDisk::new(node("ide0:0"));
    disk.filename = Some("ide0-0-d.vmdk".into());
    disk.capacity_bytes = Some(1024);
    c.disks.push(disk);
    c.files.push(CatalogFile {
        name: "ide0-0-d.vmdk".into(),
        size_bytes: 1024,
        sha256: [0xab; 32],
    });
    let text = c.to_dict().unwrap().to_string();
    let expected = format!(
        "version= 1\nstate= poweredOff\ndisplay name= \"vm |2237|22\"\n\
         config.vmx= \"[ds] vm37/vm37.vmx\"\ntimestamp= 5\nquiesced= \"no\"\n\
         disk.ide0:0.filename= \"ide0-0-d.vmdk\"\ndisk.ide0:0.capacity= 1024\n\
         file.0.name= \"ide0-0-d.vmdk\"\nfile.0.size= 1024\nfile.0.sha256= \"{}\"\n",
        "ab".repeat(32)
    );
    assert_eq!(text, expected);
    let again = load(&text).unwrap();
    assert_eq!(again.display_name, c.display_name);
    assert_eq!(again.to_dict().unwrap().to_string(), text);
}

#[test]
fn minor_versions_are_accepted() {
    let text = "version= 1.3\nstate= poweredOff\ndisplay name= \"x\"\n";
    assert!(load(text).is_ok());
}

#[test]
fn error_unsupported_version() {
    for v in ["2", "0", "2.1"] {
        let text = format!("version= {v}\nstate= poweredOff\ndisplay name= \"x\"\n");
        assert!(
            matches!(
                load(&text),
                Err(Error::UnsupportedVersion { supported: 1, .. })
            ),
            "{v}"
        );
    }
}

#[test]
fn error_missing_key() {
    let cases = [
        ("state= poweredOff\ndisplay name= \"x\"\n", "version"),
        ("version= 1\ndisplay name= \"x\"\n", "state"),
        ("version= 1\nstate= poweredOff\n", "display name"),
    ];
    for (text, key) in cases {
        assert!(
            matches!(load(text), Err(Error::MissingKey { key: k }) if k == key),
            "{key}"
        );
    }
    let head = "version= 1\nstate= poweredOff\ndisplay name= \"x\"\n";
    let no_sha = format!("{head}file.0.name= \"a\"\nfile.0.size= 1\n");
    assert!(matches!(load(&no_sha), Err(Error::MissingKey { key }) if key == "file.0.sha256"));
    let no_file = format!("{head}disk.scsi0:0.format= \"thin\"\n");
    assert!(
        matches!(load(&no_file), Err(Error::MissingKey { key }) if key == "disk.scsi0:0.filename")
    );
}

#[test]
fn error_invalid_values() {
    let head = "version= 1\nstate= poweredOff\ndisplay name= \"x\"\n";
    let file =
        |name: &str| format!("file.0.name= \"{name}\"\nfile.0.size= 1\nfile.0.sha256= \"{SHA}\"\n");
    let cases = [
        (
            "version= one\nstate= poweredOff\ndisplay name= \"x\"\n".to_owned(),
            "version",
        ),
        (
            "version= 1\nstate= running\ndisplay name= \"x\"\n".to_owned(),
            "state",
        ),
        (format!("{head}uuid= \"nope\"\n"), "uuid"),
        (
            format!("{head}config.vmx= \"[ds] ../../etc/passwd\"\n"),
            "config.vmx",
        ),
        (format!("{head}{}", file("../../etc/passwd")), "file.0.name"),
        (format!("{head}{}", file("/etc/passwd")), "file.0.name"),
        (format!("{head}{}", file("a\\b")), "file.0.name"),
        (
            format!("{head}disk.scsi0:0.filename= \"../x.vmdk\"\n"),
            "disk.scsi0:0.filename",
        ),
        (
            format!("{head}disk.scsi0:0.diskname= \"vm.vmdk\"\n"),
            "disk.scsi0:0.diskname",
        ),
        (
            format!("{head}disk.usb0:0.filename= \"x.vmdk\"\n"),
            "disk.usb0:0.filename",
        ),
        (
            format!("{head}disk.scsi0:0.backedup= \"maybe\"\n"),
            "disk.scsi0:0.backedup",
        ),
        (
            format!("{head}disk.scsi0:0.capacity= -1\n"),
            "disk.scsi0:0.capacity",
        ),
        (format!("{head}file.x.name= \"a\"\n"), "file.x.name"),
        (
            format!("{head}file.0.name= \"a\"\nfile.0.size= 1\nfile.0.sha256= \"+f\"\n"),
            "file.0.sha256",
        ),
    ];
    for (text, key) in cases {
        let err = load(&text).unwrap_err();
        assert!(
            matches!(err, Error::InvalidValue { key: ref k, .. } if k == key),
            "{key}: {err}"
        );
    }
}

#[test]
fn error_duplicate_file_name() {
    let head = "version= 1\nstate= poweredOff\ndisplay name= \"x\"\n";
    let text = format!(
        "{head}file.0.name= \"a\"\nfile.0.size= 1\nfile.0.sha256= \"{SHA}\"\n\
         file.1.name= \"a\"\nfile.1.size= 1\nfile.1.sha256= \"{SHA}\"\n"
    );
    assert!(matches!(load(&text), Err(Error::DuplicateFileName { name }) if name == "a"));
}

#[test]
fn error_unsafe_name_on_write() {
    let mut c = Catalog::new("x", PowerState::PoweredOn);
    c.files.push(CatalogFile {
        name: "../up".into(),
        size_bytes: 0,
        sha256: [0; 32],
    });
    assert!(matches!(c.to_dict(), Err(Error::UnsafeName { .. })));
    c.files.clear();
    let mut disk = CatalogDisk::new(node("scsi0:0"));
    disk.filename = Some("/abs.vmdk".into());
    c.disks.push(disk);
    assert!(matches!(c.to_dict(), Err(Error::UnsafeName { .. })));
}

#[test]
fn power_state_spellings() {
    for s in [
        PowerState::PoweredOn,
        PowerState::PoweredOff,
        PowerState::Suspended,
    ] {
        assert_eq!(s.to_string().parse::<PowerState>().unwrap(), s);
    }
    assert_eq!(
        "POWEREDON".parse::<PowerState>().unwrap(),
        PowerState::PoweredOn
    );
    assert!(matches!(
        "off".parse::<PowerState>(),
        Err(Error::InvalidValue { .. })
    ));
}
