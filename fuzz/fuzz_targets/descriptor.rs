//! Descriptor text: parse, render, parse again; opening it as a disk must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = vmdk::Descriptor::parse(data, Path::new("fuzz.vmdk")) {
        let text = d.to_text();
        let again = vmdk::Descriptor::parse(text.as_bytes(), Path::new("fuzz.vmdk")).expect("rendered descriptor parses");
        assert_eq!(again.extents, d.extents);
        let _ = d.capacity_bytes();
    }
    // Through the file path too: extents resolve (and are confined) relative to a temp dir.
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("d.vmdk");
    if std::fs::write(&p, data).is_ok() {
        if let Ok(mut disk) = vmdk::Disk::open(&p, &vmdk::OpenOptions::read_only()) {
            let mut buf = [0u8; 4096];
            let _ = disk.read_at(0, &mut buf);
            let _ = disk.allocation();
        }
    }
});
