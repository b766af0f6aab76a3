//! Files qemu-img made from random content read back byte for byte by vcb.

use crate::util::*;

const SUBFORMATS: &[&str] = &[
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

fn made_by_qemu(subformat: &str, size: usize, extra: &[&str], seed: u64) {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let raw_data = scattered_content(size, seed);
    let raw = write_file(dir.path(), "src.raw", &raw_data);
    let disk = dir.path().join("q.vmdk");
    let opts = format!(
        "subformat={subformat}{}",
        extra.iter().map(|e| format!(",{e}")).collect::<String>()
    );
    qemu_img(&[
        &"convert", &"-f", &"raw", &"-O", &"vmdk", &"-o", &opts, &raw, &disk,
    ]);
    let got = vcb_read_all(&disk);
    assert_same(&format!("{subformat} {extra:?}"), &got, &raw_data);
    // The oracle agrees with itself too (guards against a broken fixture).
    assert_same("oracle", &qemu_read_raw(&disk), &raw_data);
}

#[test]
fn every_subformat_qemu_creates_reads_identically() {
    for (i, s) in SUBFORMATS.iter().enumerate() {
        made_by_qemu(s, 24 << 20, &[], 100 + i as u64);
    }
}

#[test]
fn unaligned_capacity_and_zeroed_grains() {
    // A capacity that is not a whole number of grains, and zeroed-grain GTEs.
    made_by_qemu("monolithicSparse", (5 << 20) + 512 * 3, &[], 7);
    made_by_qemu("streamOptimized", (5 << 20) + 512 * 3, &[], 8);
    made_by_qemu("monolithicSparse", 8 << 20, &["zeroed_grain=on"], 9);
}

#[test]
fn split_extents_past_two_gib() {
    // A 2.5 GiB twoGbMaxExtentSparse disk has two pieces; data on both sides of the split.
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let disk = dir.path().join("big.vmdk");
    qemu_img(&[
        &"create",
        &"-q",
        &"-f",
        &"vmdk",
        &"-o",
        &"subformat=twoGbMaxExtentSparse",
        &disk,
        &"2560M",
    ]);
    let mut d = vmdk::Disk::open(&disk, &vmdk::OpenOptions::writable()).unwrap();
    let pattern: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let at = (2u64 << 30) - (1 << 20);
    d.write_at(at, &pattern).unwrap();
    d.close().unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "descriptor + 2 pieces"
    );
    let mut back = vec![0u8; pattern.len()];
    vmdk::Disk::open(&disk, &vmdk::OpenOptions::read_only())
        .unwrap()
        .read_at(at, &mut back)
        .unwrap();
    assert_same("readback", &back, &pattern);
    let (ok, out) = qemu_check(&disk);
    assert!(ok, "qemu-img check: {out}");
    let raw = dir.path().join("big.raw");
    qemu_img(&[&"convert", &"-O", &"raw", &disk, &raw]);
    let f = std::fs::File::open(&raw).unwrap();
    let mut q = vec![0u8; pattern.len()];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut q, at).unwrap();
    assert_same("qemu view", &q, &pattern);
}

#[test]
fn chains_qemu_created_read_identically() {
    if !require_tool("qemu-img") || !require_tool("qemu-io") {
        return;
    }
    let dir = tempdir();
    let size = 16usize << 20;
    let base_data = scattered_content(size, 21);
    let raw = write_file(dir.path(), "base.raw", &base_data);
    let base = dir.path().join("base.vmdk");
    qemu_img(&[
        &"convert",
        &"-f",
        &"raw",
        &"-O",
        &"vmdk",
        &"-o",
        &"subformat=monolithicSparse",
        &raw,
        &base,
    ]);
    let mid = dir.path().join("mid.vmdk");
    let top = dir.path().join("top.vmdk");
    qemu_img(&[
        &"create",
        &"-q",
        &"-f",
        &"vmdk",
        &"-b",
        &"base.vmdk",
        &"-F",
        &"vmdk",
        &mid,
    ]);
    // qemu writes into its own children fine (its GD entries are preallocated).
    run(std::process::Command::new("qemu-io")
        .args([
            "-f",
            "vmdk",
            "-c",
            "write -P 0xab 1M 100k",
            "-c",
            "write -P 0 3M 64k",
        ])
        .arg(&mid));
    qemu_img(&[
        &"create",
        &"-q",
        &"-f",
        &"vmdk",
        &"-b",
        &"mid.vmdk",
        &"-F",
        &"vmdk",
        &top,
    ]);
    run(std::process::Command::new("qemu-io")
        .args([
            "-f",
            "vmdk",
            "-c",
            "write -P 0xcd 1050k 10k",
            "-c",
            "write -P 0x11 15M 1M",
        ])
        .arg(&top));
    let want = qemu_read_raw(&top);
    let got = vcb_read_all(&top);
    assert_same("3-link qemu chain", &got, &want);
    let chain = vmdk::chain_consistent(&top, &vmdk::OpenOptions::read_only()).unwrap();
    assert_eq!(chain.len(), 3);
}

#[test]
fn cowd_and_stream_built_to_the_spec_are_read_by_both() {
    // A vmfs flat base with a COWD redo log, both made by vcb, written through vcb, read by qemu.
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("t.vmdk");
    vmdk::create(
        &base,
        &vmdk::CreateSpec::new(8 << 20, vmdk::DiskFormat::Thin),
    )
    .unwrap();
    let base_data = scattered_content(8 << 20, 33);
    let mut d = vmdk::Disk::open(&base, &vmdk::OpenOptions::writable()).unwrap();
    d.write_at(0, &base_data).unwrap();
    d.close().unwrap();
    let child = dir.path().join("t-000001.vmdk");
    vmdk::create_child(&base, &child, vmdk::ChildFormat::VmfsSparse).unwrap();
    let mut model = base_data.clone();
    let mut d = vmdk::Disk::open(&child, &vmdk::OpenOptions::writable()).unwrap();
    for (off, len, byte) in [
        (1000usize, 3000usize, 0xa5u8),
        (4 << 20, 70_000, 0x5a),
        ((8 << 20) - 512, 512, 1),
    ] {
        let data = vec![byte; len];
        d.write_at(off as u64, &data).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    d.close().unwrap();
    assert_same("vcb reads its COWD chain", &vcb_read_all(&child), &model);
    assert_same(
        "qemu reads vcb's COWD chain",
        &qemu_read_raw(&child),
        &model,
    );
    let (ok, out) = qemu_check(&child);
    assert!(ok, "qemu-img check: {out}");
    // And a stream export of that chain.
    let stream = dir.path().join("s.vmdk");
    let mut src = vmdk::Disk::open(&child, &vmdk::OpenOptions::read_only()).unwrap();
    vmdk::convert(
        &mut src,
        &stream,
        &vmdk::CreateSpec::new(0, vmdk::DiskFormat::StreamOptimized),
        &mut (),
    )
    .unwrap();
    assert_same("qemu reads vcb's stream", &qemu_read_raw(&stream), &model);
    assert_same("vcb reads vcb's stream", &vcb_read_all(&stream), &model);
}
