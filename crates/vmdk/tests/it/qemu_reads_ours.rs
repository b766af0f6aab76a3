//! Every format vcb writes that qemu understands: qemu-img compare, info and check agree.

use crate::util::*;
use vmdk::{ChildFormat, CreateSpec, Disk, DiskFormat, OpenOptions};

const FORMATS: &[(DiskFormat, &str)] = &[
    (DiskFormat::ZeroedThick, "vmfs"),
    (DiskFormat::EagerZeroedThick, "vmfs"),
    (DiskFormat::Thin, "vmfs"),
    (DiskFormat::MonoFlat, "monolithicFlat"),
    (DiskFormat::TwoGbFlat, "twoGbMaxExtentFlat"),
    (DiskFormat::MonoSparse, "monolithicSparse"),
    (DiskFormat::TwoGbSparse, "twoGbMaxExtentSparse"),
    (DiskFormat::StreamOptimized, "streamOptimized"),
];

fn create_type_of(disk: &std::path::Path) -> String {
    let info = qemu_info(disk);
    info["format-specific"]["data"]["create-type"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn conversions_from_raw_match_in_qemu() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let size = 20usize << 20;
    let data = scattered_content(size, 42);
    let raw = write_file(dir.path(), "src.raw", &data);
    for (format, create_type) in FORMATS {
        let dst = dir.path().join(format!("out-{}.vmdk", format.name()));
        let mut src = Disk::open_raw(&raw).unwrap();
        vmdk::convert(&mut src, &dst, &CreateSpec::new(0, format.clone()), &mut ()).unwrap();
        assert!(
            qemu_compare_raw(&dst, &raw),
            "{}: qemu-img compare differs",
            format.name()
        );
        assert_eq!(create_type_of(&dst), *create_type, "{}", format.name());
        let (ok, out) = qemu_check(&dst);
        assert!(ok, "{}: qemu-img check: {out}", format.name());
        assert_same(format.name().as_str(), &vcb_read_all(&dst), &data);
    }
}

#[test]
fn sparse_outputs_hold_only_the_data() {
    // A 64 MiB disk with 1 MiB of data must not become a 64 MiB file in sparse formats.
    let dir = tempdir();
    let mut data = vec![0u8; 64 << 20];
    data[10 << 20..11 << 20].fill(0x77);
    let raw = write_file(dir.path(), "src.raw", &data);
    for format in [
        DiskFormat::Thin,
        DiskFormat::MonoSparse,
        DiskFormat::TwoGbSparse,
        DiskFormat::StreamOptimized,
    ] {
        let dst = dir.path().join(format!("o-{}.vmdk", format.name()));
        let mut src = Disk::open_raw(&raw).unwrap();
        vmdk::convert(&mut src, &dst, &CreateSpec::new(0, format.clone()), &mut ()).unwrap();
        let info = vmdk::info(&dst, &OpenOptions::read_only()).unwrap();
        let on_disk: u64 = info.chain.iter().map(|l| l.file_bytes).sum();
        assert!(
            on_disk < 4 << 20,
            "{}: {on_disk} bytes on disk for 1 MiB of data",
            format.name()
        );
        assert_same(format.name().as_str(), &vcb_read_all(&dst), &data);
    }
}

#[test]
fn vcb_made_chains_read_correctly_in_qemu() {
    if !require_tool("qemu-img") {
        return;
    }
    for (base_format, child_format) in [
        (DiskFormat::ZeroedThick, ChildFormat::VmfsSparse),
        (DiskFormat::MonoSparse, ChildFormat::HostedSparse),
        (DiskFormat::Thin, ChildFormat::HostedSparse),
    ] {
        let dir = tempdir();
        let size = 12usize << 20;
        let base = dir.path().join("base.vmdk");
        vmdk::create(&base, &CreateSpec::new(size as u64, base_format.clone())).unwrap();
        let mut model = scattered_content(size, 5);
        let mut d = Disk::open(&base, &OpenOptions::writable()).unwrap();
        d.write_at(0, &model).unwrap();
        d.close().unwrap();
        let mut r = rng(77);
        let mut parent = base.clone();
        for level in 1..=3 {
            let child = dir.path().join(format!("base-{level:06}.vmdk"));
            vmdk::create_child(&parent, &child, child_format).unwrap();
            let mut d = Disk::open(&child, &OpenOptions::writable()).unwrap();
            for _ in 0..5 {
                use rand::Rng;
                let len = r.random_range(1..200_000usize);
                let off = r.random_range(0..size - len);
                let byte: u8 = r.random();
                d.write_at(off as u64, &vec![byte; len]).unwrap();
                model[off..off + len].fill(byte);
            }
            d.close().unwrap();
            parent = child;
        }
        let what = format!("{base_format:?} + {child_format:?} x3");
        assert_same(&what, &qemu_read_raw(&parent), &model);
        assert_same(&what, &vcb_read_all(&parent), &model);
        let (ok, out) = qemu_check(&parent);
        assert!(ok, "{what}: qemu-img check: {out}");
        let chain = qemu_img(&[&"info", &"--backing-chain", &"--output=json", &parent]);
        let v: serde_json::Value = serde_json::from_slice(&chain.stdout).unwrap();
        assert_eq!(
            v.as_array().map(|a| a.len()),
            Some(4),
            "{what}: backing chain length"
        );
    }
}

#[test]
fn commit_keeps_every_byte_and_the_chain_above_valid() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let size = 8usize << 20;
    let base = dir.path().join("d.vmdk");
    vmdk::create(&base, &CreateSpec::new(size as u64, DiskFormat::Thin)).unwrap();
    let mut model = scattered_content(size, 9);
    let mut d = Disk::open(&base, &OpenOptions::writable()).unwrap();
    d.write_at(0, &model).unwrap();
    d.close().unwrap();
    let c1 = dir.path().join("d-000001.vmdk");
    let c2 = dir.path().join("d-000002.vmdk");
    vmdk::create_child(&base, &c1, ChildFormat::VmfsSparse).unwrap();
    let mut d = Disk::open(&c1, &OpenOptions::writable()).unwrap();
    d.write_at(4096, &[0xee; 100_000]).unwrap();
    model[4096..104_096].fill(0xee);
    d.close().unwrap();
    vmdk::create_child(&c1, &c2, ChildFormat::VmfsSparse).unwrap();
    let mut d = Disk::open(&c2, &OpenOptions::writable()).unwrap();
    d.write_at(50_000, &[0x12; 9000]).unwrap();
    model[50_000..59_000].fill(0x12);
    d.close().unwrap();
    // Commit the middle link into the base; the top must now sit on the base.
    vmdk::commit(&c1, Some(&c2), &OpenOptions::read_only(), &mut ()).unwrap();
    assert!(!c1.exists(), "committed child's descriptor removed");
    assert!(
        !dir.path().join("d-000001-delta.vmdk").exists(),
        "committed child's delta removed"
    );
    assert_eq!(
        vmdk::chain_consistent(&c2, &OpenOptions::read_only())
            .unwrap()
            .len(),
        2
    );
    assert_same("after middle commit", &vcb_read_all(&c2), &model);
    assert_same("qemu after middle commit", &qemu_read_raw(&c2), &model);
    vmdk::commit(&c2, None, &OpenOptions::read_only(), &mut ()).unwrap();
    assert_same("after top commit", &vcb_read_all(&base), &model);
    assert!(qemu_compare_raw(
        &base,
        &write_file(dir.path(), "m.raw", &model)
    ));
}
