//! .vmx and .vmsd files.

use vmx::{Bus, DatastorePath, Dict, DiskNode, Error, Snapshot, SnapshotDb, VmConfig};

use crate::samples::{ESX_VMX, VMSD};

fn node(s: &str) -> DiskNode {
    s.parse().unwrap()
}

/// Lines of `a` and `b` that differ, as (line number, a's line, b's line).
fn changed_lines<'a>(a: &'a str, b: &'a str) -> Vec<(usize, &'a str, &'a str)> {
    a.lines()
        .zip(b.lines())
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i + 1, x, y))
        .collect()
}

#[test]
fn esx_vmx_reads_as_expected() {
    let dict = Dict::parse(ESX_VMX).unwrap();
    assert_eq!(dict.to_string(), ESX_VMX);
    assert_eq!(dict.get("unity.customColor"), Some("#dde3a5"));
    assert_eq!(dict.get("annotation"), Some("Owner: ops\nTicket | 4711"));
    let vm = VmConfig::from_dict(&dict).unwrap();
    assert_eq!(vm.display_name(), Some("vm37 \"prod\""));
    assert_eq!(vm.guest_os(), Some("winnetstandard"));
    assert_eq!(vm.memsize_mb(), Some(2048));
    assert_eq!(vm.num_vcpus(), Some(2));
    assert_eq!(
        vm.uuid_bios().unwrap().to_string(),
        "42115e16-9bdc-49d7-f171-53c4d7f91710"
    );
    assert_eq!(vm.nvram(), Some("vm37.nvram"));
    assert_eq!(vm.log_dir(), Some("/vmfs/volumes/datastore1/logs/vm37"));
    assert_eq!(vm.suspend_dir(), Some("/vmfs/volumes/datastore1/suspend"));
    assert_eq!(vm.working_dir(), None);
    assert_eq!(vm.guest_ip(), Some("10.17.5.31"));

    let disks: Vec<(String, &str, Option<&str>)> = vm
        .disks()
        .iter()
        .map(|d| {
            (
                d.node.to_string(),
                d.file_name.as_str(),
                d.virtual_dev.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        disks,
        [
            ("scsi0:0".to_owned(), "vm37.vmdk", Some("lsilogic")),
            (
                "scsi0:1".to_owned(),
                "[datastore2] vm37/vm37_1.vmdk",
                Some("lsilogic")
            ),
            ("scsi1:0".to_owned(), "vm37-rdmp.vmdk", Some("pvscsi")),
        ]
    );
    let on_datastore: DatastorePath = vm.disks()[1].file_name.parse().unwrap();
    assert_eq!(on_datastore.datastore(), "datastore2");
    assert_eq!(on_datastore.file_name(), Some("vm37_1.vmdk"));
    assert_eq!(node("scsi1:0").file_prefix(), "scsi1-0");
}

#[test]
fn pointing_disks_at_redo_logs_changes_only_those_lines() {
    let mut vm = VmConfig::from_dict(&Dict::parse(ESX_VMX).unwrap()).unwrap();
    vm.set_disk_file(node("scsi0:0"), "vm37-000001.vmdk")
        .unwrap();
    vm.set_disk_file(node("scsi1:0"), "vm37-rdmp-000001.vmdk")
        .unwrap();
    let text = vm.to_string();
    assert_eq!(
        changed_lines(ESX_VMX, &text),
        [
            (
                21,
                "scsi0:0.fileName = \"vm37.vmdk\"",
                "scsi0:0.fileName = \"vm37-000001.vmdk\""
            ),
            (
                29,
                "Scsi1:0.FileName = \"vm37-rdmp.vmdk\"",
                "Scsi1:0.FileName = \"vm37-rdmp-000001.vmdk\""
            ),
        ]
    );
    assert_eq!(text.lines().count(), ESX_VMX.lines().count());
}

#[test]
fn crlf_vmx_survives_edits() {
    let crlf = ESX_VMX.replace('\n', "\r\n");
    let mut vm = VmConfig::from_dict(&Dict::parse(&crlf).unwrap()).unwrap();
    assert_eq!(vm.to_string(), crlf);
    vm.set_display_name("renamed").unwrap();
    vm.add_disk(DiskNode::new(Bus::Sata, 0, 0), "data.vmdk")
        .unwrap();
    let text = vm.to_string();
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "every line ends in CRLF"
    );
    assert!(text.ends_with("sata0.present = \"TRUE\"\r\nsata0:0.present = \"TRUE\"\r\nsata0:0.fileName = \"data.vmdk\"\r\n"));
    let again = VmConfig::from_dict(&Dict::parse(&text).unwrap()).unwrap();
    assert_eq!(again.display_name(), Some("renamed"));
    assert_eq!(again.disks().len(), 4);
}

#[test]
fn vmsd_tree_and_snapshot_lifecycle() {
    let mut db = SnapshotDb::from_dict(&Dict::parse(VMSD).unwrap()).unwrap();
    let walk: Vec<(usize, &str)> = db
        .walk()
        .into_iter()
        .map(|(depth, s)| (depth, s.display_name.as_str()))
        .collect();
    assert_eq!(walk, [(0, "base"), (1, "after update"), (1, "experiment")]);
    let update = db.find_by_name("after update").unwrap();
    let low = u64::from(u32::from_be_bytes((-1_429_419_136i32).to_be_bytes()));
    assert_eq!(update.create_time_micros, (310_620 << 32) + low);

    // Take a snapshot on top of the current one, as a backup does.
    let parent = db.current();
    let uid = db
        .add(Snapshot {
            display_name: "vcb backup".into(),
            parent,
            filename: "vm37-Snapshot4.vmsn".into(),
            disks: vec![(node("scsi0:0"), "vm37-000001.vmdk".into())],
            ..Snapshot::default()
        })
        .unwrap();
    db.set_current(Some(uid)).unwrap();
    assert_eq!(uid, 4);

    // Consolidate it away again: the tree is back to where it was.
    db.remove(uid).unwrap();
    assert_eq!(db.current(), parent);
    let text = db.to_dict().unwrap().to_string();
    let again = SnapshotDb::from_dict(&Dict::parse(&text).unwrap()).unwrap();
    assert_eq!(again.snapshots(), db.snapshots());
    assert_eq!(again.last_uid(), 4);
    assert!(text.contains("snapshot1.type = \"1\"\n"));
    assert!(!text.contains("mru"));
}

#[test]
fn removing_a_middle_snapshot_reparents_its_children() {
    let mut db = SnapshotDb::from_dict(&Dict::parse(VMSD).unwrap()).unwrap();
    db.remove(1).unwrap();
    let roots: Vec<u64> = db.children(None).map(|s| s.uid).collect();
    assert_eq!(roots, [2, 3]);
    let dict = db.to_dict().unwrap();
    assert_eq!(dict.get("snapshot.numSnapshots"), Some("2"));
    assert_eq!(dict.get("snapshot0.uid"), Some("2"));
    assert_eq!(dict.get("snapshot0.parent"), None);
    assert_eq!(dict.get("snapshot2.uid"), None);
}

#[test]
fn hostile_vmsd_with_a_cycle_is_refused() {
    let hostile = VMSD.replace(
        "snapshot0.createTimeHigh",
        "snapshot0.parent = \"3\"\nsnapshot0.createTimeHigh",
    );
    let err = SnapshotDb::from_dict(&Dict::parse(&hostile).unwrap()).unwrap_err();
    assert!(matches!(err, Error::SnapshotCycle { .. }), "{err}");
}

#[test]
fn hostile_inputs_fail_cleanly() {
    let dup = format!("{ESX_VMX}DISPLAYNAME = \"evil\"\n");
    assert!(matches!(
        Dict::parse(&dup),
        Err(Error::DuplicateKey { line: 53, .. })
    ));
    let mut bytes = ESX_VMX.as_bytes().to_vec();
    bytes.extend_from_slice(b"bad = \"\xc0\xaf\"\n");
    assert!(matches!(
        Dict::parse_bytes(&bytes),
        Err(Error::NotUtf8 { line: 53 })
    ));
    let open = ESX_VMX.replace("memsize = \"2048\"", "memsize = \"2048");
    assert!(matches!(
        Dict::parse(&open),
        Err(Error::Malformed { line: 18, .. })
    ));
}
