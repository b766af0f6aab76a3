//! A descriptor opened with companion extent files: the input is split at `\0\0\0\0`
//! into the descriptor text and the contents of `e0.vmdk`, `e1.vmdk`... beside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pieces: Vec<&[u8]> = split4(data);
    let Some((desc, files)) = pieces.split_first() else { return };
    let Ok(dir) = tempfile::tempdir() else { return };
    let d = dir.path().join("d.vmdk");
    if std::fs::write(&d, desc).is_err() {
        return;
    }
    for (i, f) in files.iter().take(8).enumerate() {
        let _ = std::fs::write(dir.path().join(format!("e{i}.vmdk")), f);
    }
    if let Ok(mut disk) = vmdk::Disk::open(&d, &vmdk::OpenOptions::read_only()) {
        let mut buf = vec![0u8; 8192];
        let cap = disk.capacity();
        for off in [0, cap / 2, cap.saturating_sub(8192)] {
            let _ = disk.read_at(off, &mut buf);
        }
        let _ = disk.allocation();
    }
    let _ = vmdk::check(&d, false, &vmdk::OpenOptions::read_only());
    let _ = vmdk::info(&d, &vmdk::OpenOptions::read_only());
    let _ = vmdk::link_files(&d);
});

/// `data` split at each run of four zero bytes.
fn split4(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 4 <= data.len() {
        if data[i..i + 4] == [0, 0, 0, 0] {
            out.push(&data[start..i]);
            i += 4;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
