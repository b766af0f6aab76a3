//! The one interface every file system reader offers: inodes, directories, attributes,
//! ranged reads.

use crate::{Error, Result};

/// What kind of object an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket (listed, never read).
    Special,
}

impl Kind {
    /// The kind a POSIX `st_mode` names (ext2/3/4 and XFS store it as is).
    pub fn from_mode(mode: u16) -> Kind {
        match mode & 0xF000 {
            0x4000 => Kind::Dir,
            0x8000 => Kind::File,
            0xA000 => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// A time stamp: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since 1970-01-01 UTC (negative before).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// The attributes of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number, unique within the volume.
    pub ino: u64,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes (a symlink: the target's length).
    pub size: u64,
    /// Permission bits (the low 12 bits of st_mode).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Number of names it has.
    pub nlink: u32,
    /// Last data modification.
    pub mtime: Time,
    /// Last access.
    pub atime: Time,
    /// Last status change.
    pub ctime: Time,
}

/// A name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name's bytes as stored (never "." or "..").
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u64,
}

/// A read-only file system.
pub trait FileSystem: Send + Sync {
    /// A short name of the format ("ext4", "xfs", "vfat", "ntfs").
    fn format(&self) -> &'static str;
    /// The label, when the file system has one.
    fn label(&self) -> Option<String>;
    /// The UUID or serial number, as text.
    fn uuid(&self) -> Option<String>;
    /// The root directory's inode.
    fn root(&self) -> u64;
    /// Attributes of `ino`.
    ///
    /// # Errors
    /// Read errors, corrupt structures.
    fn stat(&self, ino: u64) -> Result<Attr>;
    /// The names in directory `ino`, without "." and "..".
    ///
    /// # Errors
    /// [`Error::NotADirectory`], read errors, corrupt structures.
    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>>;
    /// Read file `ino` from `offset` into `buf`; returns the bytes read (0 at the end).
    ///
    /// # Errors
    /// Read errors, corrupt structures.
    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// The target of symlink `ino`.
    ///
    /// # Errors
    /// Read errors, corrupt structures.
    fn read_link(&self, ino: u64) -> Result<Vec<u8>>;
    /// The byte ranges of file `ino` that hold data (holes are left out), in order.
    /// File systems that cannot tell say the whole file.
    ///
    /// # Errors
    /// Read errors, corrupt structures.
    fn data_ranges(&self, ino: u64) -> Result<Vec<(u64, u64)>> {
        let size = self.stat(ino)?.size;
        Ok(if size == 0 { vec![] } else { vec![(0, size)] })
    }
}

/// The deepest path [`lookup`] follows, so a hostile tree cannot make a walk endless.
pub const MAX_DEPTH: usize = 256;

/// Find the inode `path` (slash-separated, relative to the root) names, without following
/// symlinks. "." components are skipped; ".." is refused (paths are taken literally).
///
/// # Errors
/// [`Error::NotFound`], [`Error::NotADirectory`], read errors.
pub fn lookup(fs: &dyn FileSystem, path: &str) -> Result<u64> {
    let mut ino = fs.root();
    let mut walked = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(Error::NotFound(format!("{path} (\"..\" is not followed)")));
        }
        if walked.len() > 4096 || walked.matches('/').count() > MAX_DEPTH {
            return Err(Error::NotFound(path.to_string()));
        }
        walked.push('/');
        walked.push_str(part);
        if fs.stat(ino)?.kind != Kind::Dir {
            return Err(Error::NotADirectory(walked));
        }
        let found = fs
            .read_dir(ino)?
            .into_iter()
            .find(|e| e.name == part.as_bytes())
            .ok_or_else(|| Error::NotFound(walked.clone()))?;
        ino = found.ino;
    }
    Ok(ino)
}

/// One object met by [`walk`]: its path below the start (slash-separated bytes) and
/// attributes, or the error that kept a directory from being read.
pub type Walked = Result<(Vec<u8>, Attr)>;

/// Visit everything below directory `start` (not `start` itself), parents before children,
/// names in directory order. A directory met a second time (a loop, or a hard-linked
/// directory) is reported as an error and not entered again; so are walks deeper than
/// [`MAX_DEPTH`]. Errors of one directory do not end the walk.
pub fn walk(fs: &dyn FileSystem, start: u64, visit: &mut dyn FnMut(Walked)) {
    let mut seen = std::collections::HashSet::new();
    seen.insert(start);
    let mut stack: Vec<(Vec<u8>, u64, usize)> = vec![(Vec::new(), start, 0)];
    while let Some((dir_path, ino, depth)) = stack.pop() {
        let entries = match fs.read_dir(ino) {
            Ok(e) => e,
            Err(e) => {
                visit(Err(e));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        for e in entries {
            let mut path = dir_path.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            let attr = match fs.stat(e.ino) {
                Ok(a) => a,
                Err(err) => {
                    visit(Err(Error::corrupt(
                        String::from_utf8_lossy(&path),
                        err.to_string(),
                    )));
                    continue;
                }
            };
            if attr.kind == Kind::Dir {
                if !seen.insert(e.ino) {
                    visit(Err(Error::corrupt(
                        String::from_utf8_lossy(&path),
                        "directory met twice (a loop): not entered",
                    )));
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    visit(Err(Error::Limit {
                        what: String::from_utf8_lossy(&path).into_owned(),
                        why: format!("deeper than {MAX_DEPTH} directories"),
                    }));
                    continue;
                }
                subdirs.push((path.clone(), e.ino, depth + 1));
            }
            visit(Ok((path, attr)));
        }
        stack.extend(subdirs.into_iter().rev());
    }
}
