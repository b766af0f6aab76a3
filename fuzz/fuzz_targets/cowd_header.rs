//! ESX redo logs (COWD): header parsing, opening, map/read, a small write, and check with
//! repair must never panic or allocate without bound, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vmdk::cowd::{CowdExtent, CowdHeader};
use vmdk::extent::ZeroBacking;
use vmdk::Extent;

fuzz_target!(|data: &[u8]| {
    let parsed = CowdHeader::parse(data, Path::new("fuzz-delta.vmdk"));
    if let Ok(h) = &parsed {
        let again = CowdHeader::parse(&h.to_bytes(), Path::new("fuzz-delta.vmdk"))
            .expect("serialised header parses");
        assert_eq!(&again, h);
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("f-delta.vmdk");
    if std::fs::write(&p, data).is_err() {
        return;
    }
    let _ = vmdk::cowd::is_cowd_file(&p);
    let _ = vmdk::cowd::check(&p, false);
    let Ok(h) = parsed else { return };
    let len = h.capacity_bytes();
    if let Ok(mut e) = CowdExtent::open(&p, len, false) {
        let mut buf = vec![0u8; 256 << 10];
        for off in [0, len / 3, len.saturating_sub(100 << 10)] {
            if off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                let _ = e.read_at(off, &mut buf[..n]);
                let _ = e.map(off, len - off);
            }
        }
    }
    if let Ok(mut e) = CowdExtent::open(&p, len, true) {
        for off in [len / 2, len.saturating_sub(700)] {
            if off < len {
                let n = (len - off).min(4096) as usize;
                let _ = e.write_at(off, &buf_of(n), &mut ZeroBacking);
            }
        }
        let _ = e.close();
    }
    let _ = vmdk::cowd::check(&p, true);
});

fn buf_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}
