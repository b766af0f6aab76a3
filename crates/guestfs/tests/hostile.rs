//! Hostile and damaged images: a clear error per file or volume, bounded work, no panic.

use guestfs::{Device, FileSystem, MemDevice};
use std::path::Path;
use std::sync::Arc;
use testkit::guestimg::{self, Rng, TreeKind};

const SMALL: TreeKind = TreeKind {
    symlinks: true,
    hardlinks: true,
    sparse: true,
    max_file: 256 << 10,
};

fn tools() -> bool {
    testkit::tools::require_tools(guestimg::TOOLS)
}

/// Walk everything and read every file; the errors met.
fn read_everything(fs: &dyn FileSystem) -> Vec<String> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    guestfs::walk(fs, fs.root(), &mut |w| match w {
        Ok((_, a)) => files.push(a),
        Err(e) => errors.push(e.to_string()),
    });
    let mut buf = vec![0u8; 1 << 20];
    for a in files.iter().take(2000) {
        let r = match a.kind {
            guestfs::Kind::File => (|| {
                let mut off = 0u64;
                // A size far past the volume is read only as far as the volume goes.
                while off < a.size.min(64 << 20) {
                    let n = fs.read(a.ino, off, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    off += n as u64;
                }
                Ok(())
            })(),
            guestfs::Kind::Symlink => fs.read_link(a.ino).map(drop),
            _ => Ok(()),
        };
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    }
    errors
}

fn mem(bytes: Vec<u8>) -> Arc<dyn Device> {
    Arc::new(MemDevice(bytes))
}

fn images(d: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let tree = d.join("tree");
    guestimg::make_tree(&tree, SMALL, 9);
    let flat = d.join("flat");
    guestimg::make_tree(
        &flat,
        TreeKind {
            symlinks: false,
            hardlinks: false,
            sparse: false,
            ..SMALL
        },
        9,
    );
    for entry in guestimg::walk(&tree).into_iter().rev() {
        let name = entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(' ', "_");
        std::fs::rename(tree.join(&entry), tree.join(&entry).with_file_name(name)).unwrap();
    }
    let mut out = Vec::new();
    let img = d.join("img");
    guestimg::ext4(&tree, &img, 16 << 20, &[]);
    out.push(("ext4", std::fs::read(&img).unwrap()));
    guestimg::xfs(&tree, &img, 300 << 20);
    out.push(("xfs", std::fs::read(&img).unwrap()));
    guestimg::vfat(&flat, &img, 8 << 20, 12);
    out.push(("vfat", std::fs::read(&img).unwrap()));
    guestimg::ntfs(&flat, &img, 16 << 20);
    out.push(("ntfs", std::fs::read(&img).unwrap()));
    out
}

#[test]
fn random_damage_to_metadata_gives_errors_not_panics() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(42);
    let mut opened = 0;
    let mut refused = 0;
    for (name, image) in images(d.path()) {
        // Where the metadata is: the first 2 MiB, and the blocks around each group's tables.
        let span = image.len().min(2 << 20);
        for round in 0..60 {
            let mut bad = image.clone();
            for _ in 0..1 + round % 16 {
                let at = (rng.next_u64() as usize) % span;
                bad[at] = rng.next_u64() as u8;
            }
            match guestfs::open_file_system(mem(bad)) {
                Ok(Some(fs)) => {
                    opened += 1;
                    let _ = read_everything(fs.as_ref());
                }
                Ok(None) | Err(_) => refused += 1,
            }
        }
        eprintln!("{name}: done");
    }
    eprintln!("damaged images: {opened} opened and walked, {refused} refused");
    assert!(opened > 0);
}

#[test]
fn a_directory_loop_is_reported_and_the_walk_ends() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    guestimg::make_tree(&tree, SMALL, 10);
    let img = d.path().join("loop.img");
    guestimg::ext4(&tree, &img, 16 << 20, &[]);
    // debugfs links a directory under its own child: a loop no kernel would allow.
    testkit::tools::run(
        std::process::Command::new("debugfs")
            .args(["-w", "-R", "link deep deep/level0/back-to-deep"])
            .arg(&img),
    );
    let fs = guestfs::open_file_system(mem(std::fs::read(&img).unwrap()))
        .unwrap()
        .unwrap();
    let errors = read_everything(fs.as_ref());
    assert!(errors.iter().any(|e| e.contains("met twice")), "{errors:?}");
}

#[test]
fn sizes_and_extents_past_the_volume_are_errors_per_file() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    guestimg::make_tree(
        &tree,
        TreeKind {
            max_file: 8 << 20,
            ..SMALL
        },
        11,
    );
    let img = d.path().join("cut.img");
    guestimg::ext4(&tree, &img, 48 << 20, &[]);
    // Keep the superblock's claim but cut the volume: the superblock is refused.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes.truncate(24 << 20);
    let e = guestfs::open_file_system(mem(bytes.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("do not fit the volume"), "{e}");
    // An inode claiming a size of 2^60 bytes: read up to the end of its extents, no more.
    let fs = guestfs::open_file_system(mem(std::fs::read(&img).unwrap()))
        .unwrap()
        .unwrap();
    let ino = guestfs::lookup(fs.as_ref(), "plain.txt-5").unwrap();
    assert!(fs.stat(ino).unwrap().size > 0);
    let e = guestfs::lookup(fs.as_ref(), "plain.txt-5/x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
    let e = guestfs::lookup(fs.as_ref(), "../etc")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not followed"), "{e}");
}

#[test]
fn garbage_is_no_file_system_and_no_partition_table() {
    let mut rng = Rng::new(7);
    for len in [0usize, 1, 511, 512, 4096, 1 << 20] {
        let dev = mem(rng.bytes(len));
        assert!(guestfs::open_file_system(Arc::clone(&dev)).is_ok_and(|f| f.is_none()));
        let vols = guestfs::volumes(&[dev]).unwrap();
        assert!(vols.is_empty());
    }
}
