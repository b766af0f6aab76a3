//! `vcb files mount`: a backup's volumes served read-only over FUSE in VCB's layout:
//! `digits/<n>` for every volume, `letters/<X>` for Windows volumes (FAT, NTFS; in order
//! from C), `volumes/<label or UUID>`.
//!
//! FUSE inode numbers are handed out on first sight (volume, inode) → number, so every
//! file system's own numbering (FAT uses byte offsets) fits.

use super::source::Opened;
use anyhow::{Context, Result};
use clap::Args;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use guestfs::{Attr, FileSystem, Kind};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `vcb files mount SOURCE MOUNTDIR`
#[derive(Args, Debug)]
pub struct MountArgs {
    /// A VM (a snapshot is taken and removed), a backup folder, `repo:REPO#POINT`, or a
    /// disk file (VMDK or raw).
    pub source: String,
    /// An empty folder to mount on; the mount ends with `umount MOUNTDIR`, or SIGINT or
    /// SIGTERM to this process.
    pub mountdir: PathBuf,
    /// Threads answering the kernel's requests (more keep more reads in flight).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_THREADS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
}

/// Threads of a mount server unless told otherwise.
pub(crate) const DEFAULT_THREADS: u16 = 4;

const TTL: Duration = Duration::from_secs(60);
/// Directory listings kept at once (dropped together when full).
const LISTINGS_CACHED: usize = 1024;

/// A directory's names and their FUSE inodes.
type Listing = Arc<Vec<(Vec<u8>, u64)>>;

/// What a FUSE inode is.
#[derive(Clone)]
enum Node {
    /// A directory of the layout: its entries.
    Layout(Listing),
    /// An inode of volume `vol`.
    Guest(usize, u64),
}

struct Table {
    nodes: Vec<Node>,
    by_guest: HashMap<(usize, u64), u64>,
}

struct GuestFs {
    vols: Vec<Arc<dyn FileSystem>>,
    listings: Mutex<HashMap<u64, Listing>>,
    table: Mutex<Table>,
    started: SystemTime,
}

pub(super) fn run(src: Opened, a: &MountArgs) -> Result<()> {
    eprintln!(
        "Mounting {} read-only on {}; `umount {}` ends it",
        src.name,
        a.mountdir.display(),
        a.mountdir.display()
    );
    serve(src, &a.mountdir, a.threads)
}

/// Serve `src` on `dir` until it is unmounted (or SIGINT/SIGTERM unmounts it); the
/// backup (and a VM's snapshot) is closed after the mount ends.
pub(crate) fn serve(src: Opened, dir: &Path, threads: u16) -> Result<()> {
    let fs = GuestFs::new(&src);
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("vcb:{}", src.name)),
        MountOption::Subtype("vcb".into()),
        MountOption::DefaultPermissions,
    ];
    cfg.n_threads = Some(usize::from(threads));
    let session =
        fuser::spawn_mount(fs, dir, &cfg).with_context(|| format!("{}: mount", dir.display()))?;
    raise_read_ahead(dir);
    crate::signals::install();
    let target = dir.to_path_buf();
    std::thread::spawn(move || loop {
        if crate::signals::cancelled() {
            unmount(&target).ok();
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    let ended = session.join();
    drop(src);
    ended.with_context(|| format!("{}: FUSE session", dir.display()))
}

/// FUSE mounts get the kernel's default read-ahead of 128 KiB, which leaves whole-file
/// readers (backup agents, tar) waiting on one small request after another; 2 MiB lets
/// the kernel ask for the next pieces while this server answers. Needs root; best effort.
fn raise_read_ahead(dir: &Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let dev = std::os::unix::fs::MetadataExt::dev(&meta);
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, "2048") {
        tracing::debug!("{knob}: {e} (read-ahead stays at the kernel's default)");
    }
}

/// Unmount `dir` (a FUSE mount); `Ok(false)` when nothing was mounted there.
pub(crate) fn unmount(dir: &Path) -> std::io::Result<bool> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(e),
    }
}

impl GuestFs {
    fn new(src: &Opened) -> GuestFs {
        let mut vols = Vec::new();
        let mut table = Table {
            nodes: vec![
                Node::Layout(Listing::default()),
                Node::Layout(Listing::default()),
            ],
            by_guest: HashMap::new(),
        };
        let (mut digits, mut letters, mut named) = (Vec::new(), Vec::new(), Vec::new());
        let mut letter = b'C';
        for v in &src.volumes {
            let Ok(fs) = &v.fs else { continue };
            let idx = vols.len();
            vols.push(Arc::clone(fs));
            let root = table.guest(idx, fs.root());
            digits.push((v.number.to_string().into_bytes(), root));
            if matches!(fs.format(), "ntfs" | "vfat") && letter <= b'Z' {
                letters.push((vec![letter], root));
                letter += 1;
            }
            if let Some(id) = fs
                .label()
                .or_else(|| fs.uuid())
                .filter(|n| !n.contains('/') && n != "." && n != "..")
            {
                if !named
                    .iter()
                    .any(|(n, _): &(Vec<u8>, u64)| n == id.as_bytes())
                {
                    named.push((id.into_bytes(), root));
                }
            }
        }
        let mut top = Vec::new();
        for (name, list) in [("digits", digits), ("letters", letters), ("volumes", named)] {
            table.nodes.push(Node::Layout(Arc::new(list)));
            top.push((name.as_bytes().to_vec(), table.nodes.len() as u64 - 1));
        }
        table.nodes[1] = Node::Layout(Arc::new(top));
        GuestFs {
            vols,
            listings: Mutex::new(HashMap::new()),
            table: Mutex::new(table),
            started: SystemTime::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        self.lock().nodes.get(ino.0 as usize).cloned()
    }

    fn layout_attr(&self, ino: u64) -> FileAttr {
        file_attr(
            ino,
            FileType::Directory,
            0,
            0o555,
            2,
            0,
            0,
            self.started,
            self.started,
        )
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        match self.node(INodeNo(ino)) {
            Some(Node::Layout(_)) => Ok(self.layout_attr(ino)),
            Some(Node::Guest(v, g)) => self.vols[v]
                .stat(g)
                .map(|a| guest_attr(ino, &a))
                .map_err(io_err),
            None => Err(Errno::ENOENT),
        }
    }

    /// The names in directory `ino`. A guest directory is read once: the kernel asks for
    /// every name of a directory being walked, and the volumes never change.
    fn children(&self, ino: u64) -> Result<Listing, Errno> {
        match self.node(INodeNo(ino)).ok_or(Errno::ENOENT)? {
            Node::Layout(list) => Ok(list),
            Node::Guest(v, g) => {
                let listings = || {
                    self.listings
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                };
                if let Some(list) = listings().get(&ino) {
                    return Ok(Arc::clone(list));
                }
                let entries = self.vols[v].read_dir(g).map_err(io_err)?;
                let list: Listing = {
                    let mut t = self.lock();
                    Arc::new(
                        entries
                            .into_iter()
                            .map(|e| (e.name, t.guest(v, e.ino)))
                            .collect(),
                    )
                };
                let mut cache = listings();
                if cache.len() >= LISTINGS_CACHED {
                    cache.clear();
                }
                cache.insert(ino, Arc::clone(&list));
                Ok(list)
            }
        }
    }
}

impl Table {
    fn guest(&mut self, vol: usize, ino: u64) -> u64 {
        if let Some(&n) = self.by_guest.get(&(vol, ino)) {
            return n;
        }
        self.nodes.push(Node::Guest(vol, ino));
        let n = self.nodes.len() as u64 - 1;
        self.by_guest.insert((vol, ino), n);
        n
    }
}

fn io_err(e: guestfs::Error) -> Errno {
    tracing::warn!("{e}");
    match e {
        guestfs::Error::NotFound(_) => Errno::ENOENT,
        guestfs::Error::NotADirectory(_) => Errno::ENOTDIR,
        _ => Errno::EIO,
    }
}

fn when(t: guestfs::Time) -> SystemTime {
    match u64::try_from(t.secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, t.nanos.min(999_999_999)),
        Err(_) => UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH),
    }
}

#[allow(clippy::too_many_arguments)]
fn file_attr(
    ino: u64,
    kind: FileType,
    size: u64,
    perm: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime,
        crtime: ctime,
        kind,
        perm: perm as u16,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: 65536,
        flags: 0,
    }
}

fn guest_attr(ino: u64, a: &Attr) -> FileAttr {
    let kind = match a.kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Special => FileType::NamedPipe,
    };
    let mut f = file_attr(
        ino,
        kind,
        a.size,
        a.perm,
        a.nlink.max(1),
        a.uid,
        a.gid,
        when(a.mtime),
        when(a.ctime),
    );
    f.atime = when(a.atime);
    f
}

impl Filesystem for GuestFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.children(parent.0).and_then(|c| {
            c.iter()
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, ino)| *ino)
                .ok_or(Errno::ENOENT)
        });
        match found.and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Some(Node::Guest(v, g)) => match self.vols[v].read_link(g) {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(io_err(e)),
            },
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(Node::Guest(v, g)) = self.node(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let mut buf = vec![0u8; size as usize];
        match self.vols[v].read(g, offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(io_err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let children = match self.children(ino.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let dots = [(&b"."[..], ino.0), (&b".."[..], ino.0)];
        let names = children.iter().map(|(n, c)| (n.as_slice(), *c));
        for (i, (name, child)) in dots
            .into_iter()
            .chain(names)
            .enumerate()
            .skip(offset as usize)
        {
            let kind = if i < 2 {
                FileType::Directory
            } else {
                self.attr_of(child)
                    .map_or(FileType::RegularFile, |a| a.kind)
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }
}
