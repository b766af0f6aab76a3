//! Every file system, LVM and both partition tables through the real binary: the tree
//! `vcb files get` restores and the tree the FUSE mount serves equal the source tree.

use super::{same_with, serve, tools};
use std::path::{Path, PathBuf};
use testkit::guestimg::{self, TreeKind};
use testkit::lvm::{make_vg, write_striped, Segment};
use util::Env;

use crate::util;

const FULL: TreeKind = TreeKind {
    symlinks: true,
    hardlinks: true,
    sparse: true,
    max_file: 3 << 20,
};

/// What one volume of an image must hold: its tree, and whether modes and mtimes are kept.
struct Want {
    tree: PathBuf,
    perms: bool,
    mtimes: bool,
}

fn want(tree: &Path, perms: bool, mtimes: bool) -> Want {
    Want {
        tree: tree.to_path_buf(),
        perms,
        mtimes,
    }
}

/// Trees without spaces in names (XFS protofiles cannot hold them).
fn spaceless(tree: &Path) {
    for entry in guestimg::walk(tree).into_iter().rev() {
        let name = entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(' ', "_");
        std::fs::rename(tree.join(&entry), tree.join(&entry).with_file_name(name)).unwrap();
    }
}

/// An LVM disk: GPT with two PVs; `root` linear holding `ext`, `data` striped holding `xfs`.
fn lvm_disk(dir: &Path, ext: &Path, xfs: &Path) -> PathBuf {
    let disk = dir.join("lvm.raw");
    guestimg::blank(&disk, 1000 << 20);
    let parts = guestimg::sgdisk(&disk, &[(500, "8E00"), (0, "8E00")]);
    let vg = format!("vcbfiles{}", std::process::id());
    let lvs = vec![
        (
            "root",
            vec![Segment {
                start: 0,
                extents: 40,
                stripes: vec![(0, 2)],
                stripe_kib: 0,
            }],
        ),
        (
            "data",
            vec![Segment {
                start: 0,
                extents: 320,
                stripes: vec![(0, 50), (1, 10)],
                stripe_kib: 64,
            }],
        ),
    ];
    let (pe, extent) = make_vg(&disk, &vg, &parts, &lvs);
    guestimg::place(&disk, pe[0] + 2 * extent, ext);
    write_striped(
        &disk,
        xfs,
        &[pe[0] + 50 * extent, pe[1] + 10 * extent],
        64 << 10,
    );
    disk
}

#[test]
fn every_file_system_lvm_and_partition_table_through_get_and_the_mount() {
    if !tools() {
        return;
    }
    let env = Env::new();
    let d = env.dir.path();
    let (tree, _) = guestimg::built_tree(&d.join("tree"), FULL, 41);
    let (xtree, _) = guestimg::built_tree(
        &d.join("xtree"),
        TreeKind {
            hardlinks: false,
            sparse: false,
            ..FULL
        },
        42,
    );
    spaceless(&xtree);
    let (ntree, _) = guestimg::built_tree(&d.join("ntree"), FULL, 43);
    std::fs::write(
        ntree.join("compressible.log"),
        "a log line that compresses well\n".repeat(40_000),
    )
    .unwrap();
    let flat = d.join("flat");
    guestimg::make_tree(
        &flat,
        TreeKind {
            symlinks: false,
            hardlinks: false,
            sparse: false,
            max_file: 1 << 20,
        },
        44,
    );
    std::fs::set_permissions(
        flat.join("plain.txt-0"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    let (ext, xfs, ntfs, fat) = (
        d.join("ext.img"),
        d.join("xfs.img"),
        d.join("ntfs.img"),
        d.join("fat.img"),
    );
    guestimg::ext4(&tree, &ext, 40 << 20, &[]);
    guestimg::xfs(&xtree, &xfs, 300 << 20);
    guestimg::ntfs_with(&ntree, &ntfs, 64 << 20, true);
    guestimg::vfat(&flat, &fat, 32 << 20, 16);
    let mbr = d.join("mbr.raw");
    guestimg::blank(&mbr, 128 << 20);
    let parts = guestimg::sfdisk(&mbr, "label: dos\n,33M,6\n,,E\n,41M,83\n");
    guestimg::place(&mbr, parts[0].0, &fat);
    guestimg::place(&mbr, parts[2].0, &ext);
    let lvm = lvm_disk(d, &ext, &xfs);

    let cases: Vec<(&str, PathBuf, Vec<Want>)> = vec![
        ("xfs", xfs.clone(), vec![want(&xtree, true, false)]),
        ("ntfs", ntfs.clone(), vec![want(&ntree, false, true)]),
        (
            "mbr",
            mbr,
            vec![want(&flat, false, true), want(&tree, true, true)],
        ),
        (
            "lvm",
            lvm,
            vec![want(&tree, true, true), want(&xtree, true, false)],
        ),
    ];
    for (name, image, wants) in cases {
        let img = image.to_str().unwrap();
        let out = env.path(&format!("out-{name}"));
        let mut args = vec!["files".to_string(), "get".into(), img.into()];
        args.extend((1..=wants.len()).map(|n| format!("{n}/")));
        args.extend(["--to".to_string(), out.display().to_string()]);
        env.ok("vcb", &args.iter().map(String::as_str).collect::<Vec<_>>());
        for (n, w) in wants.iter().enumerate() {
            same_with(
                &out.join(format!("volume-{}", n + 1)),
                &w.tree,
                w.perms,
                w.mtimes,
            );
        }
        let mnt = env.path(&format!("mnt-{name}"));
        std::fs::create_dir(&mnt).unwrap();
        let _guard = guestimg::Unmount(mnt.clone());
        let mut server = serve(&env, img, &mnt);
        let checked = std::panic::catch_unwind(|| {
            for (n, w) in wants.iter().enumerate() {
                same_with(
                    &mnt.join(format!("digits/{}", n + 1)),
                    &w.tree,
                    w.perms,
                    w.mtimes,
                );
            }
        });
        testkit::tools::run(std::process::Command::new("umount").arg(&mnt));
        assert!(server.wait().unwrap().success());
        checked.unwrap_or_else(|e| std::panic::resume_unwind(e));
        std::fs::remove_dir_all(&out).unwrap();
    }
}
