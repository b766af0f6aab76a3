//! Interoperability with qemu-img, the outside oracle (fact sheet §6): qemu writes, we
//! read every byte; we write, qemu compares and checks.

use super::tests::{pattern, GRAIN};
use super::*;
use crate::extent::ZeroBacking;
use crate::stream::StreamWriter;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;
use testkit::tools::require_tool;

/// Run `args` in `dir`; on a status other than `expect`, panic with everything needed to
/// understand why. Returns stdout.
fn run(dir: &Path, args: &[&str], expect: i32) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    if out.status.code() != Some(expect) {
        let listing: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                format!(
                    "{} {}",
                    e.metadata().unwrap().len(),
                    e.file_name().to_string_lossy()
                )
            })
            .collect();
        panic!(
            "command {args:?}\ncwd {}\nfiles {listing:?}\nstatus {} (expected {expect})\nstdout:\n{}\nstderr:\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse raw file of `size` bytes with data at `spots` (offset, len).
fn make_raw(path: &Path, size: u64, spots: &[(u64, usize)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in spots.iter().enumerate() {
        f.write_all_at(&pattern(i as u64 + 1, len), off).unwrap();
    }
}

/// Compare `len` bytes of the extent from `ext_off` with `raw` from `raw_off`, in chunks.
fn assert_same(e: &mut SparseExtent, ext_off: u64, raw: &Path, raw_off: u64, len: u64) {
    let f = File::open(raw).unwrap();
    let chunk = 8u64 << 20;
    let (mut a, mut b) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut done = 0;
    while done < len {
        let n = chunk.min(len - done) as usize;
        e.read_at(ext_off + done, &mut a[..n]).unwrap();
        f.read_exact_at(&mut b[..n], raw_off + done).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n]
                .iter()
                .zip(&b[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{}: differs from {} at byte {}",
                e.path().display(),
                raw.display(),
                done + i as u64
            );
        }
        done += n as u64;
    }
}

const SIZE: u64 = (70 << 20) + 1536; // three grain tables, partial last grain
const SPOTS: &[(u64, usize)] = &[
    (0, 1 << 20),
    (5 << 20, 100),
    ((33 << 20) - 1000, 300_000),
    (SIZE - 700, 700),
];

fn qemu_convert_and_read(subformat: &str) {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("in.raw"), SIZE, SPOTS);
    run(
        d,
        &[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            "in.raw",
            "x.vmdk",
        ],
        0,
    );
    let p = d.join("x.vmdk");
    let cap = header_capacity_bytes(&p).unwrap();
    assert_eq!(cap, SIZE);
    let mut e = SparseExtent::open(&p, cap, false).unwrap();
    assert_same(&mut e, 0, &d.join("in.raw"), 0, SIZE);
    assert_eq!(e.map(0, cap).unwrap(), (BlockState::Data, 1 << 20));
    assert!(check(&p, false).unwrap().problems.is_empty());
}

#[test]
fn qemu_monolithic_sparse_reads_equal() {
    qemu_convert_and_read("monolithicSparse");
}

#[test]
fn qemu_stream_optimized_reads_equal() {
    qemu_convert_and_read("streamOptimized");
}

#[test]
fn qemu_two_gb_sparse_pieces_read_equal() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let two = 2u64 << 30;
    let size = two + (4 << 20);
    let spots = [
        (0, 70_000),
        (1 << 30, 4096),
        (two - 3000, 10_000),
        (two + (1 << 20), 65536),
    ];
    make_raw(&d.join("in.raw"), size, &spots);
    run(
        d,
        &[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            "in.raw",
            "x.vmdk",
        ],
        0,
    );
    for (i, (start, len)) in [(0, two), (two, size - two)].into_iter().enumerate() {
        let p = d.join(format!("x-s{:03}.vmdk", i + 1));
        assert_eq!(
            read_embedded_descriptor(&p).unwrap(),
            None,
            "pieces carry no descriptor"
        );
        let mut e = SparseExtent::open(&p, len, false).unwrap();
        assert_same(&mut e, 0, &d.join("in.raw"), start, len);
    }
}

#[test]
fn qemu_zeroed_grain_gtes_read_as_zero() {
    if !require_tool("qemu-img") || !require_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_raw(&d.join("in.raw"), 8 << 20, &[(0, 4 << 20)]);
    let o = "subformat=monolithicSparse,zeroed_grain=on";
    run(
        d,
        &[
            "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", o, "in.raw", "x.vmdk",
        ],
        0,
    );
    run(
        d,
        &[
            "qemu-io",
            "-f",
            "vmdk",
            "-c",
            "write -z 128k 128k",
            "x.vmdk",
        ],
        0,
    );
    run(
        d,
        &[
            "qemu-img", "convert", "-f", "vmdk", "-O", "raw", "x.vmdk", "out.raw",
        ],
        0,
    );
    let p = d.join("x.vmdk");
    let h = disk_header(&p);
    assert_eq!((h.version, h.flags & 0x4), (2, 0x4));
    let mut e = SparseExtent::open(&p, 8 << 20, false).unwrap();
    assert_eq!(e.map(0, 8 << 20).unwrap(), (BlockState::Data, 2 * GRAIN));
    assert_eq!(
        e.map(2 * GRAIN, 8 << 20).unwrap(),
        (BlockState::Zero, 2 * GRAIN)
    );
    assert_same(&mut e, 0, &d.join("out.raw"), 0, 8 << 20);
}

fn disk_header(p: &Path) -> SparseHeader {
    super::tests::disk_header(p)
}

fn descriptor(sectors: u64, create_type: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n\
         # Extent description\nRW {sectors} SPARSE \"x.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{}\"\nddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
        (sectors / (16 * 63)).max(1)
    )
}

#[test]
fn qemu_accepts_our_monolithic_sparse() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("x.vmdk");
    let opts = CreateSparse {
        embedded_descriptor: Some(descriptor(SIZE / 512, "monolithicSparse")),
        ..Default::default()
    };
    create(&p, SIZE, &opts).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut e = SparseExtent::open(&p, SIZE, true).unwrap();
    for (i, &(off, len)) in SPOTS
        .iter()
        .chain(&[(40 << 20, 3 * GRAIN as usize + 17)])
        .enumerate()
    {
        let data = pattern(i as u64 + 100, len);
        e.write_at(off, &data, &mut ZeroBacking).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    e.close().unwrap();
    drop(e);
    std::fs::write(d.join("ref.raw"), &model).unwrap();
    run(
        d,
        &[
            "qemu-img", "compare", "-f", "vmdk", "-F", "raw", "x.vmdk", "ref.raw",
        ],
        0,
    );
    let out = run(d, &["qemu-img", "check", "x.vmdk"], 0);
    assert!(out.contains("No errors were found"), "{out}");
    let info = run(d, &["qemu-img", "info", "x.vmdk"], 0);
    assert!(info.contains("create type: monolithicSparse"), "{info}");
}

#[test]
fn qemu_accepts_our_stream_optimized() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("x.vmdk");
    let mut model = vec![0u8; SIZE as usize];
    let mut w = StreamWriter::create(&p, SIZE, &descriptor(SIZE / 512, "streamOptimized")).unwrap();
    let grains = SIZE.div_ceil(GRAIN);
    for g in (0..grains).filter(|g| g % 3 != 1) {
        let off = g * GRAIN;
        let len = GRAIN.min(SIZE - off) as usize;
        // Half compressible, half random.
        let mut data = pattern(g, len);
        data[len / 2..].fill((g % 251) as u8);
        model[off as usize..off as usize + len].copy_from_slice(&data);
        w.write_grain(off, &data).unwrap();
    }
    w.finish().unwrap();
    std::fs::write(d.join("ref.raw"), &model).unwrap();
    run(
        d,
        &[
            "qemu-img", "compare", "-f", "vmdk", "-F", "raw", "x.vmdk", "ref.raw",
        ],
        0,
    );
    let info = run(d, &["qemu-img", "info", "x.vmdk"], 0);
    assert!(info.contains("create type: streamOptimized"), "{info}");
    run(d, &["qemu-img", "check", "x.vmdk"], 0);
    let mut e = SparseExtent::open(&p, SIZE, false).unwrap();
    let mut back = vec![0u8; SIZE as usize];
    e.read_at(0, &mut back).unwrap();
    assert!(back == model);
}
