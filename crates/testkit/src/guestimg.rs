//! Guest disk images for file-level tests, built with Debian's own tools (mkfs.ext4 -d,
//! mkfs.xfs -p, mkfs.vfat + mtools, mkntfs + ntfs-3g, sfdisk, sgdisk, LVM), never by hand,
//! and the source trees they are filled from.

use crate::tools::run;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian packages the builders use.
pub const TOOLS: &[&str] = &[
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.vfat",
    "mcopy",
    "mkntfs",
    "ntfs-3g",
    "sfdisk",
    "sgdisk",
    "pvcreate",
    "losetup",
];

/// What a tree may hold: FAT has no links, owners or modes; NTFS (through ntfs-3g) keeps
/// hard links but turns symlinks into reparse points.
#[derive(Clone, Copy, Debug)]
pub struct TreeKind {
    /// Symbolic links.
    pub symlinks: bool,
    /// Hard links.
    pub hardlinks: bool,
    /// Files with holes.
    pub sparse: bool,
    /// Largest file.
    pub max_file: u64,
}

/// A small deterministic generator (xorshift), so trees are the same every run.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Fill `root` with files from 0 bytes to `kind.max_file`, deep directories, Unicode names
/// and, as `kind` allows, symlinks, hard links and sparse files.
pub fn make_tree(root: &Path, kind: TreeKind, seed: u64) {
    let mut rng = Rng::new(seed);
    fs::create_dir_all(root).unwrap();
    let sizes = [0u64, 1, 511, 4096, 65_537, 300_000, 1 << 20, kind.max_file];
    let names = [
        "plain.txt",
        "Ünïcødé-名前.bin",
        "with space.dat",
        "UPPER.TXT",
        "a.b.c",
    ];
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("{}-{i}", names[i % names.len()]);
        fs::write(root.join(name), rng.bytes(*size as usize)).unwrap();
    }
    let mut deep = root.join("deep");
    for d in 0..12 {
        deep = deep.join(format!("level{d}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom.txt"), b"the bottom\n").unwrap();
    let many = root.join("many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..300 {
        fs::write(
            many.join(format!("entry-{i:04}-{}", "x".repeat(i % 40))),
            rng.bytes((i * 37) % 3000),
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::set_permissions(root.join("plain.txt-0"), fs::Permissions::from_mode(0o600)).unwrap();
    if kind.symlinks {
        std::os::unix::fs::symlink("plain.txt-0", root.join("link-relative")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link-absolute")).unwrap();
        std::os::unix::fs::symlink("../../../../outside", root.join("deep/link-up")).unwrap();
        std::os::unix::fs::symlink("x".repeat(200), root.join("link-long")).unwrap();
    }
    if kind.hardlinks {
        fs::hard_link(
            root.join("with space.dat-2"),
            root.join("deep/hardlink-to-space"),
        )
        .unwrap();
        fs::hard_link(root.join("with space.dat-2"), root.join("many/hardlink-2")).unwrap();
    }
    if kind.sparse {
        let f = fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &rng.bytes(10_000), 3 << 20).unwrap();
    }
    // Times the file systems can keep (FAT: even seconds).
    for (i, entry) in walk(root).into_iter().enumerate() {
        let t = 1_600_000_000 + (i as i64) * 7_200 * 2;
        set_mtime(&root.join(&entry), t);
    }
    set_mtime(root, 1_600_000_000);
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two initialised timespecs.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// Every path under `root`, relative, parents before children, sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names.into_iter().rev() {
            let p = rel.join(n);
            if fs::symlink_metadata(root.join(&p)).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What is compared of one tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'f', 'd' or 'l'.
    pub kind: char,
    /// Size of files.
    pub size: u64,
    /// SHA-256 of a file's bytes, a link's target.
    pub content: String,
    /// Permission bits.
    pub perm: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// The first path (of this tree) of the same inode, for files with more than one name.
    pub link_group: Option<String>,
}

/// The tree under `root` as the local file system shows it.
pub fn manifest(root: &Path) -> BTreeMap<String, Entry> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    for rel in walk(root) {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let key = rel.to_string_lossy().into_owned();
        let (kind, content) = if m.is_dir() {
            ('d', String::new())
        } else if m.file_type().is_symlink() {
            (
                'l',
                fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
            )
        } else {
            (
                'f',
                hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap())),
            )
        };
        let link_group = (kind == 'f' && m.nlink() > 1).then(|| m.ino().to_string());
        out.insert(
            key,
            Entry {
                kind,
                size: if kind == 'f' { m.len() } else { 0 },
                content,
                perm: m.mode() & 0o7777,
                mtime: m.mtime(),
                link_group,
            },
        );
    }
    canonical_link_groups(&mut out);
    out
}

/// Name each hard-link group (entries whose `link_group` holds the same inode number) by
/// its smallest path, so trees walked in different orders compare equal.
pub fn canonical_link_groups(tree: &mut BTreeMap<String, Entry>) {
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    for (path, e) in tree.iter() {
        if let Some(ino) = &e.link_group {
            first.entry(ino.clone()).or_insert_with(|| path.clone());
        }
    }
    for e in tree.values_mut() {
        if let Some(ino) = &e.link_group {
            e.link_group = Some(first[ino].clone());
        }
    }
}

/// `size` bytes of zeros at `path`.
pub fn blank(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// An ext4 image of `tree`.
pub fn ext4(tree: &Path, img: &Path, size: u64, extra: &[&str]) {
    blank(img, size);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "guest-ext4", "-E", "root_owner=0:0"])
        .args(extra)
        .arg("-d")
        .arg(tree)
        .arg(img));
}

/// An XFS image of `tree` through a protofile (mkfs.xfs -p): no hard links, no holes.
pub fn xfs(tree: &Path, img: &Path, size: u64) {
    blank(img, size);
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto_dir(tree, &mut proto, 1);
    proto.push_str("$\n");
    let pf = img.with_extension("proto");
    fs::write(&pf, proto).unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-L", "guest-xfs", "-p"])
        .arg(&pf)
        .arg(img));
}

fn proto_dir(dir: &Path, out: &mut String, depth: usize) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let pad = " ".repeat(depth);
    for n in names {
        let p = dir.join(&n);
        let name = n.to_string_lossy();
        assert!(
            !name.contains(' '),
            "protofile names cannot hold spaces: {name}"
        );
        let m = fs::symlink_metadata(&p).unwrap();
        let perm = m.mode() & 0o777;
        if m.is_dir() {
            out.push_str(&format!("{pad}{name} d--{perm:o} 0 0\n"));
            proto_dir(&p, out, depth + 1);
            out.push_str(&format!("{pad}$\n"));
        } else if m.file_type().is_symlink() {
            out.push_str(&format!(
                "{pad}{name} l--777 0 0 {}\n",
                fs::read_link(&p).unwrap().display()
            ));
        } else {
            out.push_str(&format!("{pad}{name} ---{perm:o} 0 0 {}\n", p.display()));
        }
    }
}

/// A FAT image of `tree` (mkfs.vfat, then mcopy keeping times).
pub fn vfat(tree: &Path, img: &Path, size: u64, fat_bits: u32) {
    let _ = fs::remove_file(img);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", &fat_bits.to_string(), "-n", "GUESTFAT"])
        .arg(img)
        .arg((size / 1024).to_string()));
    for n in fs::read_dir(tree).unwrap() {
        let p = n.unwrap().path();
        run(Command::new("mcopy")
            .env("TZ", "UTC")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-m", "-Q", "-i"])
            .arg(img)
            .arg(&p)
            .arg("::/"));
    }
}

/// An NTFS image of `tree`: mkntfs on a plain file, filled through ntfs-3g (FUSE).
pub fn ntfs(tree: &Path, img: &Path, size: u64) {
    ntfs_with(tree, img, size, false);
}

/// [`ntfs`], with every file written compressed (LZNT1) when `compressed`: the root is
/// marked compressed (FILE_ATTRIBUTE_COMPRESSED) before the tree is copied in.
pub fn ntfs_with(tree: &Path, img: &Path, size: u64, compressed: bool) {
    blank(img, size);
    run(Command::new("mkntfs")
        .args(["-F", "-Q", "-q", "-L", "guest-ntfs"])
        .arg(img));
    let mnt = img.with_extension("mnt");
    fs::create_dir_all(&mnt).unwrap();
    run(Command::new("ntfs-3g")
        .args(["-o", "compression"])
        .arg(img)
        .arg(&mnt));
    if compressed {
        let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
        let flag = 0x0000_0800u32.to_be_bytes();
        // SAFETY: valid NUL-terminated strings and a 4-byte value.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"system.ntfs_attrib_be".as_ptr(),
                flag.as_ptr().cast(),
                4,
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "mark the root compressed: {}",
            std::io::Error::last_os_error()
        );
    }
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(&mnt)
        .status();
    run(Command::new("umount").arg(&mnt));
    assert!(copied.unwrap().success(), "cp into ntfs-3g failed");
    let _ = fs::remove_dir(&mnt);
}

/// Copy `img` into `disk` at byte `offset`.
pub fn place(disk: &Path, offset: u64, img: &Path) {
    let f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    let data = fs::read(img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, offset).unwrap();
}

/// Partition `disk` with `sfdisk` from `script`; the partitions' (start, size) in bytes.
pub fn sfdisk(disk: &Path, script: &str) -> Vec<(u64, u64)> {
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    partitions(disk)
}

/// The partitions of `disk` as sfdisk reads them: (start, size) bytes, in table order.
pub fn partitions(disk: &Path) -> Vec<(u64, u64)> {
    let out = run(Command::new("sfdisk").arg("-d").arg(disk));
    out.lines()
        .filter(|l| l.contains("start="))
        .map(|l| {
            let field = |k: &str| -> u64 {
                l.split(',')
                    .find_map(|f| {
                        f.trim()
                            .split_once('=')
                            .filter(|(a, _)| a.trim().ends_with(k))
                            .map(|(_, v)| v.trim().parse().unwrap())
                    })
                    .unwrap()
            };
            (field("start") * 512, field("size") * 512)
        })
        .collect()
}

/// GPT-partition `disk` with sgdisk: `sizes` in MiB (0: the rest).
pub fn sgdisk(disk: &Path, parts: &[(u64, &str)]) -> Vec<(u64, u64)> {
    let mut cmd = Command::new("sgdisk");
    for (i, (mib, code)) in parts.iter().enumerate() {
        let end = if *mib == 0 {
            "0".to_string()
        } else {
            format!("+{mib}M")
        };
        cmd.arg(format!("-n={}:0:{end}", i + 1))
            .arg(format!("-t={}:{code}", i + 1));
    }
    run(cmd.arg(disk));
    partitions(disk)
}

/// [`make_tree`] at `root`, and its [`manifest`].
pub fn built_tree(root: &Path, kind: TreeKind, seed: u64) -> (PathBuf, BTreeMap<String, Entry>) {
    make_tree(root, kind, seed);
    (root.to_path_buf(), manifest(root))
}

/// `tar` of everything under `dir` into a pipe (GNU tar skips reading files when the
/// archive is /dev/null); the archive's size. Panics when tar fails.
pub fn tar_bytes(dir: &Path) -> u64 {
    let out = run(Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; tar -cf - -C \"$1\" . | wc -c",
            "tar",
        ])
        .arg(dir));
    out.trim().parse().unwrap()
}

/// The bytes of the regular files of a [`manifest`].
pub fn file_bytes(tree: &BTreeMap<String, Entry>) -> u64 {
    tree.values()
        .filter(|e| e.kind == 'f')
        .map(|e| e.size)
        .sum()
}

/// Unmounts `0` (lazily) when dropped, so a failing test leaves no mount or FUSE server
/// behind.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}
