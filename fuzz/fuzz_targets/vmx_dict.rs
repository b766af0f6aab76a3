//! Fuzz the VMware dictionary parser and the typed views on top of it.
//!
//! Oracles: nothing panics; an accepted input writes back byte for byte; whatever a
//! typed view writes, the same view reads back to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmx::{Catalog, Dict, SnapshotDb, VmConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(dict) = Dict::parse_bytes(data) else {
        return;
    };
    assert_eq!(dict.to_string().as_bytes(), data, "unmodified round trip");
    for (key, value) in dict.iter() {
        assert_eq!(dict.get(key), Some(value));
    }

    if let Ok(vm) = VmConfig::from_dict(&dict) {
        let _ = (vm.log_dir(), vm.disks().len());
    }

    if let Ok(db) = SnapshotDb::from_dict(&dict) {
        let walked = db.walk();
        assert_eq!(
            walked.len(),
            db.snapshots().len(),
            "every snapshot is reachable"
        );
        if let Ok(written) = db.to_dict() {
            let text = written.to_string();
            let reread = Dict::parse(&text).expect("a written .vmsd parses");
            let again = SnapshotDb::from_dict(&reread).expect("a written .vmsd loads");
            assert_eq!(again.snapshots(), db.snapshots());
            assert_eq!(again.current(), db.current());
        }
    }

    if let Ok(catalog) = Catalog::from_dict(&dict) {
        if let Ok(written) = catalog.to_dict() {
            let text = written.to_string();
            let reread = Dict::parse(&text).expect("a written catalog parses");
            let again = Catalog::from_dict(&reread).expect("a written catalog loads");
            assert_eq!(again.files, catalog.files);
            assert_eq!(again.disks, catalog.disks);
        }
    }
});
