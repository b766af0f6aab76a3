//! Issue 10: descriptors written by an attacker or by other tools.

use crate::util::*;
use std::path::Path;
use vmdk::{Confinement, CreateSpec, Disk, DiskFormat, Error, OpenOptions};

fn flat_descriptor(dir: &Path, name: &str, extent: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"{extent}\" 0\n"),
    )
    .unwrap();
    p
}

fn refusal(path: &Path, opts: &OpenOptions) -> String {
    match Disk::open(path, opts) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn issue_10_symlinked_fifo_and_device_extents_are_refused() {
    let dir = tempdir();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, vec![b's'; 8192]).unwrap();
    let vm = dir.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    // A symbolic link out of the folder is resolved before the check.
    std::os::unix::fs::symlink(&secret, vm.join("link-flat.vmdk")).unwrap();
    let p = flat_descriptor(&vm, "link.vmdk", "link-flat.vmdk");
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("outside the disk's folder"), "{e}");
    // The line from the report: an absolute name of a host file.
    let p = flat_descriptor(&vm, "evil.vmdk", secret.to_str().unwrap());
    assert!(refusal(&p, &OpenOptions::read_only()).contains("outside"));
    // A FIFO in the folder is refused, not opened (which would block).
    let fifo = vm.join("fifo-flat.vmdk");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = flat_descriptor(&vm, "fifo.vmdk", "fifo-flat.vmdk");
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("FIFO"), "{e}");
    // A device is no data extent, even when the user allows any path.
    let p = flat_descriptor(&vm, "dev.vmdk", "/dev/zero");
    let anywhere = OpenOptions::read_only().confined(Confinement::Anywhere);
    let e = refusal(&p, &anywhere);
    assert!(e.contains("not a regular file"), "{e}");
    // A link inside the folder to a file inside the folder is fine.
    std::fs::write(vm.join("real-flat.vmdk"), vec![7u8; 8192]).unwrap();
    std::os::unix::fs::symlink("real-flat.vmdk", vm.join("alias-flat.vmdk")).unwrap();
    let p = flat_descriptor(&vm, "alias.vmdk", "alias-flat.vmdk");
    let mut d = Disk::open(&p, &OpenOptions::read_only()).unwrap();
    let mut buf = [0u8; 16];
    d.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 16]);
}

#[test]
fn issue_10_linked_clone_bases_open_only_inside_the_roots() {
    let dir = tempdir();
    let ds = std::fs::canonicalize(dir.path()).unwrap().join("ds");
    let (base_dir, clone_dir) = (ds.join("base"), ds.join("clone"));
    std::fs::create_dir_all(&base_dir).unwrap();
    std::fs::create_dir_all(&clone_dir).unwrap();
    let base = base_dir.join("base.vmdk");
    vmdk::create(&base, &CreateSpec::new(1 << 20, DiskFormat::Thin)).unwrap();
    let clone = clone_dir.join("clone-000001.vmdk");
    vmdk::create_child(&base, &clone, vmdk::ChildFormat::VmfsSparse).unwrap();
    let e = refusal(&clone, &OpenOptions::read_only());
    assert!(e.contains("parent"), "{e}");
    let roots = OpenOptions::read_only().confined(Confinement::Roots(vec![ds.clone()].into()));
    assert_eq!(Disk::open(&clone, &roots).unwrap().links().len(), 2);
    // A root that does not hold the descriptor gives it no more than its folder.
    let other = OpenOptions::read_only().confined(Confinement::Roots(vec![base_dir].into()));
    assert!(Disk::open(&clone, &other).is_err());
}

#[test]
fn issue_10_embedded_descriptors_name_the_file_itself() {
    require_tool("qemu-img");
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, scattered_content(1 << 20, 10)).unwrap();
    for (sub, name) in [
        ("monolithicSparse", "disk"),
        ("streamOptimized", "generated-stream.vmdk"),
    ] {
        let p = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            &"convert",
            &"-O",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &raw,
            &p,
        ]);
        // What ESXi's and open-vmdk's exports write in the extent line.
        let text = vmdk::sparse::read_embedded_descriptor(&p).unwrap().unwrap();
        let line = text.lines().find(|l| l.starts_with("RW ")).unwrap();
        let quoted = line.split('"').nth(1).unwrap();
        let patched = text.replace(&format!("\"{quoted}\""), &format!("\"{name}\""));
        assert_ne!(patched, text);
        vmdk::sparse::write_embedded_descriptor(&p, &patched).unwrap();
        let mut d = Disk::open(&p, &OpenOptions::read_only()).unwrap();
        let mut got = vec![0u8; 1 << 20];
        d.read_at(0, &mut got).unwrap();
        assert!(got == std::fs::read(&raw).unwrap(), "{sub}");
        assert_eq!(vmdk::link_files(&p).unwrap(), vec![p.clone()]);
    }
}

#[test]
fn issue_10_one_sparse_file_in_many_extents_is_refused() {
    let dir = tempdir();
    let big = dir.path().join("big.vmdk");
    vmdk::create(&big, &CreateSpec::new(1 << 40, DiskFormat::MonoSparse)).unwrap();
    let mut text = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n",
    );
    for _ in 0..1000 {
        text.push_str("RW 1 SPARSE \"big.vmdk\"\n");
    }
    let p = dir.path().join("many.vmdk");
    std::fs::write(&p, text).unwrap();
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("more than one sparse extent"), "{e}");
    assert!(matches!(
        Disk::open(&p, &OpenOptions::read_only()),
        Err(Error::Corrupt { .. })
    ));
}

/// Writes an seSparse redo log of `base` at `dir/child.vmdk` (descriptor) with the
/// layout ESXi uses: grain `g` of the list holds `data[g]`; `zero` grains read as zeros
/// (`unmapped` too, as after an SCSI UNMAP).
fn sesparse_child(
    dir: &Path,
    base: &Path,
    cap_sectors: u64,
    data: &[(u64, Vec<u8>)],
    zero: &[u64],
    unmapped: &[u64],
) -> std::path::PathBuf {
    let put =
        |b: &mut Vec<u8>, off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let (gd_s, gt_s, grains_s) = (16u64, 32u64, 2048u64);
    let tables = cap_sectors.div_ceil(8 * 4096);
    let mut file = vec![0u8; (grains_s as usize + data.len() * 8) * 512];
    let mut h = vec![0u8; 512];
    for (i, v) in [
        0xcafebabe,
        0x0000_0002_0000_0001,
        cap_sectors,
        8,
        64,
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        2,
        1,
        3,
        1,
        gd_s,
        1,
        gt_s,
        tables * 64,
        4,
        1,
        5,
        1,
        grains_s,
        cap_sectors,
    ]
    .iter()
    .enumerate()
    {
        put(&mut h, i * 8, *v);
    }
    file[..512].copy_from_slice(&h);
    put(&mut file, 512, 0xcafecafe);
    let gte = |grain: u64, e: u64, file: &mut Vec<u8>| {
        let (t, i) = (grain / 4096, grain % 4096);
        put(
            file,
            (gd_s * 512 + t * 8) as usize,
            0x1000_0000_0000_0000 | t,
        );
        put(file, ((gt_s + t * 64) * 512 + i * 8) as usize, e);
    };
    for (n, (grain, bytes)) in data.iter().enumerate() {
        let idx = n as u64;
        gte(
            *grain,
            0x3000_0000_0000_0000 | ((idx & 0xfff) << 48) | (idx >> 12),
            &mut file,
        );
        let at = ((grains_s + idx * 8) * 512) as usize;
        file[at..at + 4096].copy_from_slice(bytes);
    }
    for g in zero {
        gte(*g, 0x2000_0000_0000_0000, &mut file);
    }
    for g in unmapped {
        gte(*g, 0x1000_0000_0000_0000 | 7, &mut file);
    }
    std::fs::write(dir.join("child-sesparse.vmdk"), file).unwrap();
    let (bd, _) = vmdk::read_descriptor(base).unwrap();
    let desc = dir.join("child.vmdk");
    std::fs::write(&desc, format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID={:08x}\ncreateType=\"seSparse\"\nparentFileNameHint=\"{}\"\n# Extent description\nRW {cap_sectors} SESPARSE \"child-sesparse.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"14\"\n",
        bd.cid, base.file_name().unwrap().to_str().unwrap()
    )).unwrap();
    desc
}

#[test]
fn issue_10_sesparse_redo_logs_read_like_qemu_reads_them() {
    require_tool("qemu-img");
    let dir = tempdir();
    let cap = 48u64 << 20;
    let base = dir.path().join("base.vmdk");
    vmdk::create(&base, &CreateSpec::new(cap, DiskFormat::Thin)).unwrap();
    let mut b = Disk::open(&base, &OpenOptions::writable()).unwrap();
    b.write_at(0, &scattered_content(cap as usize, 3)).unwrap();
    b.close().unwrap();
    let grain = |g: u64| {
        (0..4096)
            .map(|i| (g as usize * 7 + i) as u8)
            .collect::<Vec<u8>>()
    };
    let data: Vec<(u64, Vec<u8>)> = [0u64, 1, 4095, 4096, 8200, 12287]
        .iter()
        .map(|g| (*g, grain(*g)))
        .collect();
    let desc = sesparse_child(dir.path(), &base, cap / 512, &data, &[2, 9000], &[3]);
    let ours = vcb_read_all(&desc);
    let theirs = qemu_read_raw(&desc);
    assert_same("seSparse chain", &ours, &theirs);
    assert_eq!(&ours[4096..8192], &grain(1)[..]);
    assert!(
        ours[2 * 4096..4 * 4096].iter().all(|&b| b == 0),
        "zero and unmapped grains"
    );
    // Writing is refused, clearly.
    let e = Disk::open(&desc, &OpenOptions::writable())
        .err()
        .expect("read-only");
    assert!(e.to_string().contains("read-only"), "{e}");
    // A dirty file (journal to replay) is refused.
    let extent = dir.path().join("child-sesparse.vmdk");
    let mut bytes = std::fs::read(&extent).unwrap();
    bytes[512 + 24] = 1;
    std::fs::write(&extent, bytes).unwrap();
    let e = Disk::open(&desc, &OpenOptions::read_only())
        .err()
        .expect("dirty");
    assert!(e.to_string().contains("replayJournal"), "{e}");
}

#[test]
fn issue_10_vmfs_extents_with_an_offset_and_4064_mib_splits_are_read() {
    require_tool("qemu-img");
    let dir = tempdir();
    // `RW 16 VMFS "x" 1`: qemu calls an offset on a VMFS line malformed; VMware writes it.
    let flat = dir.path().join("dummy-flat.vmdk");
    let bytes = scattered_content(9 * 512, 5);
    std::fs::write(&flat, &bytes).unwrap();
    let d = dir.path().join("dummy.vmdk");
    std::fs::write(&d, "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 8 VMFS \"dummy-flat.vmdk\" 1\n").unwrap();
    assert_eq!(vcb_read_all(&d), &bytes[512..]);
    // Workstation's split disks: 4064 MiB pieces.
    let piece = 8_323_072u64;
    for i in 1..=2 {
        let p = dir.path().join(format!("ws-s00{i}.vmdk"));
        vmdk::create(&p, &CreateSpec::new(piece * 512, DiskFormat::MonoSparse)).unwrap();
        let mut disk = Disk::open(&p, &OpenOptions::writable()).unwrap();
        disk.write_at(piece * 512 - 4096, &[i as u8; 4096]).unwrap();
        disk.write_at(0, &[0x10 + i as u8; 4096]).unwrap();
        disk.close().unwrap();
        // Pieces of a split disk carry no embedded descriptor of their own.
        let mut f = std::fs::read(&p).unwrap();
        f[28..44].fill(0);
        std::fs::write(&p, f).unwrap();
    }
    let ws = dir.path().join("ws.vmdk");
    std::fs::write(&ws, format!("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\nRW {piece} SPARSE \"ws-s001.vmdk\"\nRW {piece} SPARSE \"ws-s002.vmdk\"\n")).unwrap();
    let mut disk = Disk::open(&ws, &OpenOptions::read_only()).unwrap();
    assert_eq!(disk.capacity(), 2 * piece * 512);
    let mut buf = vec![0u8; 8192];
    disk.read_at(piece * 512 - 4096, &mut buf).unwrap();
    assert_eq!(&buf[..4096], &[1u8; 4096]);
    assert_eq!(&buf[4096..], &[0x12u8; 4096]);
    let out = dir.path().join("seam.raw");
    // qemu reads the same seam (the raw copy is sparse: 8 GiB of mostly holes).
    qemu_img(&[&"convert", &"-O", &"raw", &ws, &out]);
    let mut q = vec![0u8; 8192];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&out).unwrap(),
        &mut q,
        piece * 512 - 4096,
    )
    .unwrap();
    assert!(q == buf, "qemu reads the same seam");
}

/// A streamOptimized file as some writers make it: grains out of LBA order, the grain
/// directory's place in the header itself and no footer or end-of-stream marker.
fn stream_out_of_order(path: &Path, grains: &[(u64, Vec<u8>)]) {
    use std::io::Write;
    let (cap_sectors, grain_sectors) = (2048u64, 128u64);
    let mut f = vec![0u8; 128 * 512];
    let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\nRW 2048 SPARSE \"whatever.vmdk\"\n";
    f[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
    let mut gt = vec![0u32; 512];
    for (g, data) in grains {
        let sector = (f.len() / 512) as u32;
        gt[*g as usize] = sector;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        let z = z.finish().unwrap();
        f.extend_from_slice(&(g * grain_sectors).to_le_bytes());
        f.extend_from_slice(&(z.len() as u32).to_le_bytes());
        f.extend_from_slice(&z);
        f.resize(f.len().next_multiple_of(512), 0);
    }
    let gt_sector = (f.len() / 512) as u32;
    f.extend(gt.iter().flat_map(|e| e.to_le_bytes()));
    let gd_sector = (f.len() / 512) as u64;
    f.extend_from_slice(&gt_sector.to_le_bytes());
    f.resize(f.len().next_multiple_of(512), 0);
    let mut h = [0u8; 77 + 2];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&0x30001u32.to_le_bytes());
    for (off, v) in [
        (12, cap_sectors),
        (20, grain_sectors),
        (28, 1),
        (36, 20),
        (56, gd_sector),
        (64, 128),
    ] {
        h[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    f[..79].copy_from_slice(&h);
    std::fs::write(path, f).unwrap();
}

#[test]
fn issue_10_stream_files_with_grains_out_of_order_and_no_footer_are_read() {
    require_tool("qemu-img");
    let dir = tempdir();
    let p = dir.path().join("s.vmdk");
    let grain = |g: u64| {
        (0..65536)
            .map(|i| ((i / 7) as u8).wrapping_add(g as u8))
            .collect::<Vec<u8>>()
    };
    stream_out_of_order(
        &p,
        &[(15, grain(15)), (3, grain(3)), (0, grain(0)), (7, grain(7))],
    );
    let ours = vcb_read_all(&p);
    assert_same("out-of-order stream", &ours, &qemu_read_raw(&p));
    assert_eq!(&ours[3 * 65536..4 * 65536], &grain(3)[..]);
    // A grain marker for another LBA than its grain table says is corruption.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[128 * 512] ^= 0x80;
    std::fs::write(&p, bytes).unwrap();
    let mut d = Disk::open(&p, &OpenOptions::read_only()).unwrap();
    let e = d.read_at(15 * 65536, &mut vec![0u8; 4096]).unwrap_err();
    assert!(e.to_string().contains("grain marker"), "{e}");
}

#[test]
fn issue_10_a_stream_footer_from_another_disk_is_refused() {
    let dir = tempdir();
    let p = dir.path().join("s.vmdk");
    vmdk::create(&p, &CreateSpec::new(4 << 20, DiskFormat::StreamOptimized)).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    // The footer's header sits one sector before the end-of-stream marker.
    let footer = bytes.len() - 1024;
    assert_eq!(&bytes[footer..footer + 4], b"KDMV");
    bytes[footer + 12..footer + 20].copy_from_slice(&(16u64 << 11).to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = Disk::open(&p, &OpenOptions::read_only())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("footer's capacity"), "{e}");
}

#[test]
fn issue_10_check_reports_two_directory_entries_sharing_a_table() {
    let dir = tempdir();
    let p = dir.path().join("m.vmdk");
    vmdk::create(&p, &CreateSpec::new(64 << 20, DiskFormat::MonoSparse)).unwrap();
    let mut d = Disk::open(&p, &OpenOptions::writable()).unwrap();
    d.write_at(0, &[1u8; 4096]).unwrap();
    d.write_at(40 << 20, &[2u8; 4096]).unwrap();
    d.close().unwrap();
    assert!(vmdk::check(&p, false, &OpenOptions::read_only())
        .unwrap()
        .is_clean());
    let mut bytes = std::fs::read(&p).unwrap();
    let gd = u64::from_le_bytes(bytes[56..64].try_into().unwrap()) as usize * 512;
    let first: [u8; 4] = bytes[gd..gd + 4].try_into().unwrap();
    bytes[gd + 4..gd + 8].copy_from_slice(&first);
    std::fs::write(&p, bytes).unwrap();
    let report = vmdk::check(&p, false, &OpenOptions::read_only()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("name the same grain table")),
        "{:?}",
        report.problems
    );
}
