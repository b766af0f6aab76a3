//! streamOptimized files whose header says "grain directory at the end": the footer
//! search and the marker walk over arbitrary bytes, then reads through what was found.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A valid stream header (1 MiB, 64 KiB grains, GD at end, compressed, markers), then
    // the fuzzer's bytes from sector 1 on.
    let mut file = vec![0u8; 512];
    file[0..4].copy_from_slice(b"KDMV");
    file[4..8].copy_from_slice(&3u32.to_le_bytes());
    file[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    file[12..20].copy_from_slice(&2048u64.to_le_bytes());
    file[20..28].copy_from_slice(&128u64.to_le_bytes());
    file[44..48].copy_from_slice(&512u32.to_le_bytes());
    file[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    file[64..72].copy_from_slice(&1u64.to_le_bytes());
    file[73..77].copy_from_slice(b"\n \r\n");
    file[77..79].copy_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(data);
    let Ok(dir) = tempfile::tempdir() else { return };
    let p = dir.path().join("s.vmdk");
    if std::fs::write(&p, &file).is_err() {
        return;
    }
    if let Ok(mut e) = vmdk::sparse::SparseExtent::open(&p, 1 << 20, false) {
        let mut buf = vec![0u8; 65536];
        for off in [0u64, 65536, 512 * 1024, (1 << 20) - 65536] {
            let _ = vmdk::extent::Extent::read_at(&mut e, off, &mut buf);
        }
    }
    let _ = vmdk::check(&p, false, &vmdk::OpenOptions::read_only());
});
