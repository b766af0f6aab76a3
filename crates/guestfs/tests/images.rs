//! Every reader against images Debian's tools built from a known tree: the tree read back
//! through guestfs equals the source (content hashes, sizes, modes, mtimes at the file
//! system's precision, symlink targets, hard links).

use guestfs::{Device, FileDevice, FileSystem, Kind};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use testkit::guestimg::{self, Entry, TreeKind};

const FULL: TreeKind = TreeKind {
    symlinks: true,
    hardlinks: true,
    sparse: true,
    max_file: 20 << 20,
};

fn tools() -> bool {
    testkit::tools::require_tools(guestimg::TOOLS)
}

/// The tree of `fs` in the shape of [`guestimg::manifest`].
fn manifest(fs: &dyn FileSystem) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    guestfs::walk(fs, fs.root(), &mut |w| {
        let (path, a) = w.unwrap();
        let key = String::from_utf8(path).unwrap();
        let (kind, content) = match a.kind {
            Kind::Dir => ('d', String::new()),
            Kind::Symlink => (
                'l',
                String::from_utf8(fs.read_link(a.ino).unwrap()).unwrap(),
            ),
            _ => {
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                loop {
                    let n = fs.read(a.ino, off, &mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                assert_eq!(off, a.size, "{key}: read {off} of {} bytes", a.size);
                ('f', hex::encode(h.finalize()))
            }
        };
        let link_group = (kind == 'f' && a.nlink > 1).then(|| a.ino.to_string());
        out.insert(
            key,
            Entry {
                kind,
                size: if kind == 'f' { a.size } else { 0 },
                content,
                perm: a.perm,
                mtime: a.mtime.secs,
                link_group,
            },
        );
    });
    guestimg::canonical_link_groups(&mut out);
    out
}

/// Compare, leaving out what the file system cannot keep.
fn assert_same(
    got: &BTreeMap<String, Entry>,
    want: &BTreeMap<String, Entry>,
    perms: bool,
    mtimes: bool,
) {
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k) && k.as_str() != "lost+found")
        .collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "names only read back: {extra:?}; names not read back: {missing:?}"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(
            (g.kind, g.size, &g.content),
            (w.kind, w.size, &w.content),
            "{k}"
        );
        if perms {
            assert_eq!(g.perm, w.perm, "{k}: mode");
        }
        if mtimes && w.kind != 'l' && w.kind != 'd' {
            assert_eq!(g.mtime, w.mtime, "{k}: mtime");
        }
        assert_eq!(g.link_group, w.link_group, "{k}: hard links");
    }
}

fn open(img: &Path) -> Arc<dyn FileSystem> {
    let dev: Arc<dyn Device> = Arc::new(FileDevice::open(img).unwrap());
    guestfs::open_file_system(dev)
        .unwrap()
        .expect("a file system")
}

#[test]
fn ext4_ext3_and_inline_data_trees_read_back_exactly() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (tree, want) = guestimg::built_tree(&d.path().join("tree"), FULL, 1);
    // mke2fs 1.47.0 with inline_data drops a file's trailing hole: that tree has no sparse file.
    let (dense, want_dense) = guestimg::built_tree(
        &d.path().join("dense"),
        TreeKind {
            sparse: false,
            ..FULL
        },
        1,
    );
    for (name, extra) in [
        ("ext4", vec![]),
        ("ext3", vec!["-t", "ext3"]),
        ("inline", vec!["-O", "inline_data", "-I", "256"]),
    ] {
        let img = d.path().join(format!("{name}.img"));
        let (tree, want) = if name == "inline" {
            (&dense, &want_dense)
        } else {
            (&tree, &want)
        };
        guestimg::ext4(tree, &img, 96 << 20, &extra);
        // Rebuild directory indexes so large directories are hashed trees.
        let _ = std::process::Command::new("e2fsck")
            .args(["-fyD", "-q"])
            .arg(&img)
            .output();
        let fs = open(&img);
        assert_eq!(fs.label().as_deref(), Some("guest-ext4"));
        assert_same(&manifest(fs.as_ref()), want, true, true);
        if name == "inline" {
            continue;
        }
        let sparse = guestfs::lookup(fs.as_ref(), "sparse.img").unwrap();
        let ranges = fs.data_ranges(sparse).unwrap();
        let held: u64 = ranges.iter().map(|r| r.1).sum();
        assert!(
            held < 1 << 20,
            "{name}: the sparse file keeps its holes: {ranges:?}"
        );
    }
}

#[test]
fn xfs_tree_reads_back_exactly() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    let kind = TreeKind {
        hardlinks: false,
        sparse: false,
        ..FULL
    };
    guestimg::make_tree(&tree, kind, 2);
    // Protofiles cannot name files with spaces: rename them.
    for entry in guestimg::walk(&tree).into_iter().rev() {
        let name = entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(' ', "_");
        std::fs::rename(tree.join(&entry), tree.join(&entry).with_file_name(name)).unwrap();
    }
    // A directory far past one directory block (node form: several leaf blocks and a
    // free index), with names up to the 255-byte limit.
    let huge = tree.join("huge");
    std::fs::create_dir(&huge).unwrap();
    for i in 0..3000 {
        std::fs::write(
            huge.join(format!("{i:05}-{}", "n".repeat(i % 250))),
            i.to_string(),
        )
        .unwrap();
    }
    let want = guestimg::manifest(&tree);
    let img = d.path().join("xfs.img");
    guestimg::xfs(&tree, &img, 320 << 20);
    let fs = open(&img);
    assert_eq!(fs.format(), "xfs");
    // mkfs.xfs -p stamps its own times; everything else must match.
    assert_same(&manifest(fs.as_ref()), &want, true, false);
}

#[test]
fn fat12_fat16_fat32_trees_read_back_exactly() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    let kind = TreeKind {
        symlinks: false,
        hardlinks: false,
        sparse: false,
        max_file: 3 << 20,
    };
    guestimg::make_tree(&tree, kind, 3);
    std::fs::set_permissions(
        tree.join("plain.txt-0"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let want = guestimg::manifest(&tree);
    for (bits, size) in [(12u32, 8u64 << 20), (16, 32 << 20), (32, 300 << 20)] {
        let img = d.path().join(format!("fat{bits}.img"));
        guestimg::vfat(&tree, &img, size, bits);
        let fs = open(&img);
        assert_eq!(fs.label().as_deref(), Some("GUESTFAT"));
        let got = manifest(fs.as_ref());
        assert_same(&got, &want, false, true);
    }
}

#[test]
fn ntfs_tree_reads_back_exactly() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    // ntfs-3g writes symlinks as Interix links (SYSTEM files holding "IntxLNK").
    guestimg::make_tree(&tree, FULL, 4);
    let want = guestimg::manifest(&tree);
    let img = d.path().join("ntfs.img");
    guestimg::ntfs(&tree, &img, 128 << 20);
    let fs = open(&img);
    assert_eq!(fs.label().as_deref(), Some("guest-ntfs"));
    let vols = disk_volumes(&img);
    assert_eq!(
        (vols.len(), vols[0].place.as_str()),
        (1, "disk 0"),
        "a whole-disk NTFS is one volume"
    );
    assert_same(&manifest(fs.as_ref()), &want, false, true);
    let sparse = guestfs::lookup(fs.as_ref(), "sparse.img").unwrap();
    let held: u64 = fs.data_ranges(sparse).unwrap().iter().map(|r| r.1).sum();
    assert!(
        held < 1 << 20,
        "the sparse file keeps its holes ({held} bytes of data)"
    );
}

#[test]
fn ntfs_compressed_files_read_back_exactly() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    guestimg::make_tree(
        &tree,
        TreeKind {
            symlinks: false,
            sparse: false,
            ..FULL
        },
        8,
    );
    // Compressible data: text, long zero runs, and a mix across compression units.
    std::fs::write(
        tree.join("text.log"),
        "compressible line of a log file\n".repeat(60_000),
    )
    .unwrap();
    let mut mixed = vec![0u8; 700_000];
    mixed[100_000..110_000].fill(7);
    mixed[400_000..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8);
    std::fs::write(tree.join("deep/mixed.bin"), mixed).unwrap();
    let want = guestimg::manifest(&tree);
    let img = d.path().join("ntfs.img");
    guestimg::ntfs_with(&tree, &img, 128 << 20, true);
    let fs = open(&img);
    assert_same(&manifest(fs.as_ref()), &want, false, true);
}

fn disk_volumes(disk: &Path) -> Vec<guestfs::Volume> {
    let dev: Arc<dyn Device> = Arc::new(FileDevice::open(disk).unwrap());
    guestfs::volumes(&[dev]).unwrap()
}

#[test]
fn mbr_with_logical_partitions_and_gpt_hold_their_file_systems() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (tree, want) = guestimg::built_tree(
        &d.path().join("tree"),
        TreeKind {
            max_file: 1 << 20,
            ..FULL
        },
        5,
    );
    let fat_tree = d.path().join("fat");
    guestimg::make_tree(
        &fat_tree,
        TreeKind {
            symlinks: false,
            hardlinks: false,
            sparse: false,
            max_file: 1 << 20,
        },
        6,
    );
    std::fs::set_permissions(
        fat_tree.join("plain.txt-0"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let want_fat = guestimg::manifest(&fat_tree);
    let (ext, fat) = (d.path().join("ext.img"), d.path().join("fat.img"));
    guestimg::ext4(&tree, &ext, 32 << 20, &[]);
    guestimg::vfat(&fat_tree, &fat, 32 << 20, 16);

    // MBR: a primary FAT partition, then an extended one holding two logical partitions.
    let mbr = d.path().join("mbr.img");
    guestimg::blank(&mbr, 128 << 20);
    let parts = guestimg::sfdisk(&mbr, "label: dos\n,33M,c\n,,E\n,33M,83\n,33M,83\n");
    assert_eq!(parts.len(), 4, "{parts:?}");
    guestimg::place(&mbr, parts[0].0, &fat);
    guestimg::place(&mbr, parts[3].0, &ext);
    let vols = disk_volumes(&mbr);
    let places: Vec<_> = vols.iter().map(|v| v.place.clone()).collect();
    assert_eq!(places, ["disk 0 partition 1", "disk 0 partition 6"]);
    assert_same(
        &manifest(vols[0].fs.as_ref().unwrap().as_ref()),
        &want_fat,
        false,
        true,
    );
    assert_same(
        &manifest(vols[1].fs.as_ref().unwrap().as_ref()),
        &want,
        true,
        true,
    );

    // GPT: ext4 and FAT.
    let gpt = d.path().join("gpt.img");
    guestimg::blank(&gpt, 96 << 20);
    let parts = guestimg::sgdisk(&gpt, &[(33, "8300"), (33, "0700")]);
    guestimg::place(&gpt, parts[0].0, &ext);
    guestimg::place(&gpt, parts[1].0, &fat);
    let vols = disk_volumes(&gpt);
    assert_eq!(vols.len(), 2);
    assert!(vols[0].gpt_guid.is_some());
    assert_same(
        &manifest(vols[0].fs.as_ref().unwrap().as_ref()),
        &want,
        true,
        true,
    );
    assert_same(
        &manifest(vols[1].fs.as_ref().unwrap().as_ref()),
        &want_fat,
        false,
        true,
    );
}

#[test]
fn lvm_linear_and_striped_volumes_hold_their_file_systems() {
    if !tools() {
        return;
    }
    use testkit::lvm::{make_vg, write_striped, Segment};
    let d = tempfile::tempdir().unwrap();
    let (tree, want) = guestimg::built_tree(
        &d.path().join("tree"),
        TreeKind {
            max_file: 2 << 20,
            ..FULL
        },
        7,
    );
    let ext = d.path().join("ext.img");
    guestimg::ext4(&tree, &ext, 24 << 20, &[]);
    let disk = d.path().join("lvm.img");
    guestimg::blank(&disk, 128 << 20);
    let parts = guestimg::sgdisk(&disk, &[(60, "8E00"), (0, "8E00")]);
    let vg = format!("vcbtest{}", std::process::id());
    // root: 24 extents linear on pv0 from extent 3; data: 24 extents striped over both PVs.
    let lvs = vec![
        (
            "root",
            vec![Segment {
                start: 0,
                extents: 24,
                stripes: vec![(0, 3)],
                stripe_kib: 0,
            }],
        ),
        (
            "data",
            vec![Segment {
                start: 0,
                extents: 24,
                stripes: vec![(0, 30), (1, 5)],
                stripe_kib: 64,
            }],
        ),
    ];
    let (pe, extent) = make_vg(&disk, &vg, &parts, &lvs);
    guestimg::place(&disk, pe[0] + 3 * extent, &ext);
    write_striped(
        &disk,
        &ext,
        &[pe[0] + 30 * extent, pe[1] + 5 * extent],
        64 << 10,
    );
    let vols = disk_volumes(&disk);
    let places: Vec<_> = vols.iter().map(|v| v.place.clone()).collect();
    assert_eq!(places, [format!("{vg}/root"), format!("{vg}/data")]);
    for v in &vols {
        assert_same(
            &manifest(v.fs.as_ref().unwrap().as_ref()),
            &want,
            true,
            true,
        );
    }
}
