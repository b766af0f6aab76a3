//! Hosted sparse / streamOptimized extents: header parsing, opening (footer location,
//! marker scan, grain directories) and reading a few ranges must never panic or allocate
//! without bound, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vmdk::sparse::{SparseExtent, SparseHeader};
use vmdk::Extent;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SparseHeader::parse(data, Path::new("fuzz.vmdk")) {
        let again = SparseHeader::parse(&h.to_bytes(), Path::new("fuzz.vmdk"))
            .expect("serialised header parses");
        assert_eq!(again, h);
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("s.vmdk");
    if std::fs::write(&p, data).is_err() {
        return;
    }
    let _ = vmdk::sparse::read_embedded_descriptor(&p);
    let _ = vmdk::sparse::check(&p, false);
    let Ok(cap) = vmdk::sparse::header_capacity_bytes(&p) else {
        return;
    };
    let len = cap.min(1 << 40);
    if let Ok(mut e) = SparseExtent::open(&p, len, false) {
        let mut buf = vec![0u8; 256 << 10];
        for off in [0, len / 3, len.saturating_sub(100 << 10)] {
            if off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                let _ = e.read_at(off, &mut buf[..n]);
                let _ = e.map(off, len - off);
            }
        }
    }
});
