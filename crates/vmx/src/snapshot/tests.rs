use super::*;

const VMSD: &str = r#".encoding = "UTF-8"
# kept comment
snapshot.lastUID = "5"
snapshot.current = "4"
snapshot0.uid = "1"
snapshot0.filename = "vps-Snapshot1.vmsn"
snapshot0.displayName = "base"
snapshot0.description = "clean |22install|22"
snapshot0.createTimeHigh = "310596"
snapshot0.createTimeLow = "938781285"
snapshot0.numDisks = "1"
snapshot0.disk0.fileName = "vps.vmdk"
snapshot0.disk0.node = "scsi0:0"
snapshot0.type = "1"
snapshot2.uid = "4"
snapshot2.filename = "vps-Snapshot4.vmsn"
snapshot2.parent = "1"
snapshot2.displayName = "after update"
snapshot2.createTimeHigh = "310600"
snapshot2.createTimeLow = "-1"
snapshot2.numDisks = "1"
snapshot2.disk0.fileName = "vps-000001.vmdk"
snapshot2.disk0.node = "scsi0:0"
snapshot1.uid = "3"
snapshot1.filename = "vps-Snapshot3.vmsn"
snapshot1.parent = "1"
snapshot1.displayName = "branch"
snapshot.numSnapshots = "3"
snapshot.mru0.uid = "4"
snapshot.redoNotWithParent = "TRUE"
"#;

fn db() -> SnapshotDb {
    SnapshotDb::from_dict(&Dict::parse(VMSD).unwrap()).unwrap()
}

fn load(text: &str) -> Result<SnapshotDb, Error> {
    SnapshotDb::from_dict(&Dict::parse(text).unwrap())
}

#[test]
fn reads_snapshots() {
    let db = db();
    assert_eq!(db.last_uid(), 5);
    assert_eq!(db.current(), Some(4));
    let uids: Vec<u64> = db.snapshots().iter().map(|s| s.uid).collect();
    assert_eq!(uids, [1, 3, 4], "ordered by snapshotN index");
    let base = db.get(1).unwrap();
    assert_eq!(base.description, "clean \"install\"");
    assert_eq!(base.create_time_micros, (310_596 << 32) + 938_781_285);
    assert_eq!(
        base.disks,
        [("scsi0:0".parse().unwrap(), "vps.vmdk".to_owned())]
    );
    assert_eq!(base.parent, None);
    assert_eq!(
        db.get(4).unwrap().create_time_micros,
        (310_600 << 32) + 0xFFFF_FFFF
    );
    assert_eq!(db.find_by_name("branch").map(|s| s.uid), Some(3));
    assert!(db.find_by_name("nope").is_none());
}

#[test]
fn tree_queries() {
    let db = db();
    let roots: Vec<u64> = db.children(None).map(|s| s.uid).collect();
    assert_eq!(roots, [1]);
    let kids: Vec<u64> = db.children(Some(1)).map(|s| s.uid).collect();
    assert_eq!(kids, [3, 4]);
    let walk: Vec<(usize, u64)> = db.walk().into_iter().map(|(d, s)| (d, s.uid)).collect();
    assert_eq!(walk, [(0, 1), (1, 3), (1, 4)]);
}

#[test]
fn to_dict_rewrites_the_section_densely() {
    let mut db = db();
    let removed = db.remove(1).unwrap();
    assert_eq!(removed.display_name, "base");
    assert_eq!(db.children(None).count(), 2);
    let text = db.to_dict().unwrap().to_string();
    let expected = r#".encoding = "UTF-8"
# kept comment
snapshot.lastUID = "5"
snapshot.current = "4"
snapshot0.uid = "3"
snapshot0.filename = "vps-Snapshot3.vmsn"
snapshot0.displayName = "branch"
snapshot0.description = ""
snapshot0.createTimeHigh = "0"
snapshot0.createTimeLow = "0"
snapshot0.numDisks = "0"
snapshot1.uid = "4"
snapshot1.filename = "vps-Snapshot4.vmsn"
snapshot1.displayName = "after update"
snapshot1.description = ""
snapshot1.createTimeHigh = "310600"
snapshot1.createTimeLow = "-1"
snapshot1.numDisks = "1"
snapshot1.disk0.fileName = "vps-000001.vmdk"
snapshot1.disk0.node = "scsi0:0"
snapshot.numSnapshots = "2"
snapshot.redoNotWithParent = "TRUE"
"#;
    assert_eq!(text, expected);
    assert_eq!(load(&text).unwrap().snapshots(), db.snapshots());
}

#[test]
fn unknown_snapshot_keys_stay_with_their_snapshot() {
    let db = db();
    let dict = db.to_dict().unwrap();
    assert_eq!(dict.get("snapshot0.type"), Some("1"));
    assert_eq!(dict.get("snapshot.mru0.uid"), None);
    let again = SnapshotDb::from_dict(&dict).unwrap();
    assert_eq!(again.snapshots(), db.snapshots());
    assert_eq!(again.to_dict().unwrap(), dict);
}

#[test]
fn add_assigns_the_next_uid() {
    let mut db = db();
    let disks = vec![("scsi0:0".parse().unwrap(), "vps-000002.vmdk".to_owned())];
    let uid = db
        .add(Snapshot {
            uid: 99,
            display_name: "new".into(),
            parent: Some(4),
            create_time_micros: 1_700_000_000_000_000,
            filename: "vps-Snapshot6.vmsn".into(),
            disks,
            ..Snapshot::default()
        })
        .unwrap();
    assert_eq!(uid, 6);
    db.set_current(Some(uid)).unwrap();
    let again = load(&db.to_dict().unwrap().to_string()).unwrap();
    assert_eq!(again.last_uid(), 6);
    assert_eq!(again.current(), Some(6));
    assert_eq!(again.get(6), db.get(6));
    assert_eq!(
        again.get(6).unwrap().create_time_micros,
        1_700_000_000_000_000
    );
}

#[test]
fn removing_the_current_snapshot_moves_current_to_its_parent() {
    let mut db = db();
    db.remove(4).unwrap();
    assert_eq!(db.current(), Some(1));
    db.set_current(None).unwrap();
    assert_eq!(db.current(), None);
    assert!(!db.to_dict().unwrap().contains_key("snapshot.current"));
}

#[test]
fn new_database_writes_a_minimal_file() {
    let mut db = SnapshotDb::new();
    assert_eq!(
        db.to_dict().unwrap().to_string(),
        ".encoding = \"UTF-8\"\nsnapshot.lastUID = \"0\"\nsnapshot.numSnapshots = \"0\"\n"
    );
    let uid = db
        .add(Snapshot {
            filename: "a.vmsn".into(),
            ..Snapshot::default()
        })
        .unwrap();
    assert_eq!(uid, 1);
    assert_eq!(
        load(&db.to_dict().unwrap().to_string())
            .unwrap()
            .snapshots()
            .len(),
        1
    );
}

#[test]
fn error_snapshot_count_mismatch() {
    let text = "snapshot.numSnapshots = \"2\"\nsnapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\n";
    assert!(matches!(
        load(text),
        Err(Error::SnapshotCountMismatch {
            declared: 2,
            found: 1
        })
    ));
}

#[test]
fn error_snapshot_cycle_on_load() {
    let text = "snapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\nsnapshot0.parent = \"2\"\n\
                snapshot1.uid = \"2\"\nsnapshot1.filename = \"b\"\nsnapshot1.parent = \"1\"\n";
    assert!(matches!(load(text), Err(Error::SnapshotCycle { .. })));
}

#[test]
fn error_duplicate_uid_on_load() {
    let text = "snapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\n\
                snapshot1.uid = \"1\"\nsnapshot1.filename = \"b\"\n";
    assert!(matches!(
        load(text),
        Err(Error::DuplicateSnapshotUid { uid: 1 })
    ));
}

#[test]
fn error_unknown_parent() {
    let text = "snapshot0.uid = \"2\"\nsnapshot0.filename = \"a\"\nsnapshot0.parent = \"1\"\n";
    assert!(matches!(
        load(text),
        Err(Error::UnknownParent { uid: 2, parent: 1 })
    ));
    let mut db = SnapshotDb::new();
    let orphan = Snapshot {
        parent: Some(5),
        ..Snapshot::default()
    };
    assert!(matches!(
        db.add(orphan),
        Err(Error::UnknownParent { uid: 1, parent: 5 })
    ));
}

#[test]
fn error_unknown_snapshot() {
    let text = "snapshot.current = \"7\"\nsnapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\n";
    assert!(matches!(load(text), Err(Error::UnknownSnapshot { uid: 7 })));
    let mut db = db();
    assert!(matches!(
        db.remove(42),
        Err(Error::UnknownSnapshot { uid: 42 })
    ));
    assert!(matches!(
        db.set_current(Some(42)),
        Err(Error::UnknownSnapshot { uid: 42 })
    ));
}

#[test]
fn set_disk_file_changes_only_that_disk() {
    let mut db = db();
    let before = db.clone();
    let node: DiskNode = "scsi0:0".parse().unwrap();
    db.set_disk_file(4, node, "moved/vps-000001.vmdk").unwrap();
    assert_eq!(
        db.get(4).unwrap().disks,
        [(node, "moved/vps-000001.vmdk".to_owned())]
    );
    assert_eq!(db.get(1), before.get(1), "other snapshots keep their disks");
    let text = db.to_dict().unwrap().to_string();
    assert!(
        text.contains("snapshot2.disk0.fileName = \"moved/vps-000001.vmdk\""),
        "{text}"
    );
    assert!(
        text.contains("snapshot0.disk0.fileName = \"vps.vmdk\""),
        "{text}"
    );
    let reread = SnapshotDb::from_dict(&db.to_dict().unwrap()).unwrap();
    assert_eq!(reread.get(4), db.get(4));
}

#[test]
fn error_unknown_snapshot_or_disk_for_set_disk_file() {
    let mut db = db();
    let before = db.clone();
    let node: DiskNode = "scsi0:0".parse().unwrap();
    assert!(matches!(
        db.set_disk_file(42, node, "x.vmdk"),
        Err(Error::UnknownSnapshot { uid: 42 })
    ));
    let other: DiskNode = "scsi0:1".parse().unwrap();
    assert!(matches!(
        db.set_disk_file(4, other, "x.vmdk"),
        Err(Error::UnknownDisk { node }) if node == other
    ));
    // Snapshot 3 records no disks at all.
    assert!(matches!(
        db.set_disk_file(3, node, "x.vmdk"),
        Err(Error::UnknownDisk { .. })
    ));
    assert_eq!(db, before, "nothing changes on error");
}

#[test]
fn error_missing_key() {
    let no_uid = "snapshot0.filename = \"a\"\n";
    assert!(matches!(load(no_uid), Err(Error::MissingKey { key }) if key == "snapshot0.uid"));
    let no_node = "snapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\nsnapshot0.numDisks = \"1\"\n\
                   snapshot0.disk0.fileName = \"a.vmdk\"\n";
    assert!(
        matches!(load(no_node), Err(Error::MissingKey { key }) if key == "snapshot0.disk0.node")
    );
}

#[test]
fn error_invalid_values() {
    let base = "snapshot0.uid = \"1\"\nsnapshot0.filename = \"a\"\n";
    for (extra, key) in [
        ("snapshot0.createTimeLow = \"4294967296\"\n", "snapshot0.createTimeLow"),
        ("snapshot0.createTimeHigh = \"-3\"\n", "snapshot0.createTimeHigh"),
        ("snapshot0.numDisks = \"4000000000\"\n", "snapshot0.numDisks"),
        ("snapshot0.parent = \"x\"\n", "snapshot0.parent"),
        ("snapshot01.uid = \"2\"\n", "snapshot01.uid"),
        (
            "snapshot0.numDisks = \"1\"\nsnapshot0.disk0.fileName = \"a\"\nsnapshot0.disk0.node = \"usb0:0\"\n",
            "snapshot0.disk0.node",
        ),
    ] {
        let err = load(&format!("{base}{extra}")).unwrap_err();
        assert!(
            matches!(err, Error::InvalidValue { key: ref k, .. } if k == key),
            "{extra}: {err}"
        );
    }
}

#[test]
fn error_uid_overflow() {
    let text = format!("snapshot.lastUID = \"{}\"\n", u64::MAX);
    let mut db = load(&text).unwrap();
    assert!(matches!(
        db.add(Snapshot::default()),
        Err(Error::UidOverflow)
    ));
}
