//! Where the files a descriptor names may lie, and how they are opened.
//!
//! Descriptors are untrusted input: a line `RW 16 FLAT "/etc/shadow" 0` must not turn a
//! disk read into a read of any host file. Every extent and parent name goes through
//! [`resolve`] and every file through [`open_file`]:
//!
//! 1. The name is joined to the descriptor's folder (canonical) and the result is
//!    canonicalised, so symbolic links anywhere in it are resolved *before* the check.
//! 2. The canonical path must lie where the [`Confinement`] allows: in the descriptor's
//!    folder (the default), or, for a descriptor that itself lies under one of the
//!    caller's roots (the host's datastores), under any of those roots (linked clones
//!    name `../base/base.vmdk`). [`Confinement::Anywhere`] is the user's explicit opt-in.
//! 3. The file is opened with `O_NOFOLLOW` and checked on the open descriptor to be a
//!    regular file; only a raw device mapping's extent may be a block device (its
//!    mapping file is a symbolic link to the device, so it is the one name followed).
//! 4. A [`FileSource`] replaces the file system altogether: a restore opens backup
//!    files only through the set it verified, so a descriptor cannot reach anything else.

use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fileio::PathFile;
use crate::link::OpenOptions;

/// Where the files a descriptor names may lie.
#[derive(Debug, Clone, Default)]
pub enum Confinement {
    /// In the descriptor's own folder (or below it). The default: descriptors are
    /// untrusted input.
    #[default]
    Folder,
    /// Also anywhere under these folders (canonical paths), provided the descriptor
    /// itself lies under one of them: the host's datastores.
    Roots(Arc<[PathBuf]>),
    /// Anywhere: the user vouches for the descriptor (`--allow-outside-extents`).
    Anywhere,
}

/// Opens the files of a chain in place of the file system.
pub trait FileSource: Send + Sync + std::fmt::Debug {
    /// Opens `path` (canonical), or refuses it.
    ///
    /// # Errors
    /// Any I/O error; refusing is [`std::io::ErrorKind::PermissionDenied`].
    fn open(&self, path: &Path, writable: bool) -> std::io::Result<File>;
}

/// What a name in a descriptor stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A data extent: a regular file.
    Extent,
    /// The extent of a raw device mapping: the name (a symbolic link in the folder) is
    /// confined, its target may be a block device.
    RdmExtent,
    /// A parent descriptor.
    Parent,
}

impl Role {
    fn what(self) -> &'static str {
        match self {
            Role::Extent | Role::RdmExtent => "extent",
            Role::Parent => "parent",
        }
    }
}

/// The path the name `name` in the descriptor `descriptor` stands for, checked against
/// `opts.confinement`. Canonical when the file exists.
///
/// # Errors
/// [`Error::PathOutsideFolder`] for a name leaving where it may lie (or holding NUL);
/// [`Error::Io`] when the descriptor's folder cannot be resolved.
pub(crate) fn resolve(
    descriptor: &Path,
    name: &str,
    role: Role,
    opts: &OpenOptions,
) -> Result<PathBuf> {
    let refuse = || Error::PathOutsideFolder {
        path: descriptor.to_path_buf(),
        kind: role.what(),
        name: name.to_string(),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(refuse());
    }
    let dir = canonical_dir(descriptor)?;
    let joined = dir.join(name);
    let checked = match role {
        // The mapping file is a link to the device: resolve its folder only.
        Role::RdmExtent => match (joined.parent(), joined.components().next_back()) {
            (Some(parent), Some(Component::Normal(file))) => {
                canonical_or_lexical(parent).join(file)
            }
            _ => return Err(refuse()),
        },
        _ => canonical_or_lexical(&joined),
    };
    if allowed(&checked, &dir, &opts.confinement) {
        Ok(checked)
    } else {
        Err(refuse())
    }
}

/// Whether `path` may be used by a descriptor in `dir` under `rule`.
fn allowed(path: &Path, dir: &Path, rule: &Confinement) -> bool {
    match rule {
        Confinement::Folder => path.starts_with(dir),
        Confinement::Roots(roots) => {
            path.starts_with(dir)
                || (roots.iter().any(|r| dir.starts_with(r))
                    && roots.iter().any(|r| path.starts_with(r)))
        }
        Confinement::Anywhere => true,
    }
}

/// [`resolve`] for an extent line of `kind`: a mapping's extent by the RDM rule.
///
/// # Errors
/// As for [`resolve`].
pub(crate) fn resolve_extent(
    descriptor: &Path,
    kind: crate::descriptor::ExtentType,
    name: &str,
    opts: &OpenOptions,
) -> Result<PathBuf> {
    use crate::descriptor::ExtentType as T;
    let role = match kind {
        T::VmfsRdm | T::VmfsRaw => Role::RdmExtent,
        _ => Role::Extent,
    };
    resolve(descriptor, name, role, opts)
}

/// The canonical folder of `file`.
pub(crate) fn canonical_dir(file: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(file).map_err(|e| Error::io(file, "resolve", e))?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    std::fs::canonicalize(parent).map_err(|e| Error::io(parent, "resolve folder", e))
}

/// `path` canonicalised; for a missing file, its folder canonicalised (as far up as
/// exists) and the rest appended without `..` processing beyond what exists.
fn canonical_or_lexical(path: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(path) {
        return c;
    }
    let mut rest = Vec::new();
    let mut cur = path;
    while let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) {
        rest.push(name.to_os_string());
        if let Ok(c) = std::fs::canonicalize(parent) {
            let mut out = c;
            for n in rest.iter().rev() {
                out.push(n);
            }
            return lexical_clean(&out);
        }
        cur = parent;
    }
    lexical_clean(path)
}

/// Removes `.` and resolves `..` lexically (only used for paths that do not exist).
fn lexical_clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Opens a file named by a descriptor (already [`resolve`]d) for `role`.
///
/// # Errors
/// [`Error::Io`] (a missing file keeps its `NotFound` kind); [`Error::File`] with
/// `NotRegular` for a symbolic link, FIFO, device or folder where a regular file must be.
pub(crate) fn open_file(
    path: &Path,
    role: Role,
    writable: bool,
    opts: &OpenOptions,
) -> Result<PathFile> {
    if let Some(source) = &opts.source {
        let file = source
            .open(path, writable)
            .map_err(|e| Error::io(path, "open", e))?;
        return PathFile::from_file(file, path, writable);
    }
    let file = match role {
        Role::RdmExtent => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(path)
                .map_err(|e| Error::io(path, "open", e))?;
            let t = file
                .metadata()
                .map_err(|e| Error::io(path, "stat", e))?
                .file_type();
            if !(t.is_file() || t.is_block_device()) {
                return Err(fsio::Error::NotRegular {
                    path: path.to_path_buf(),
                    kind: "neither a block device nor a regular file",
                }
                .into());
            }
            file
        }
        Role::Extent | Role::Parent => open_regular(path, writable)?,
    };
    PathFile::from_file(file, path, writable)
}

/// Opens the caller's own `path` following symbolic links, refusing anything but a
/// regular file (a FIFO would block the open, a device is no descriptor).
pub(crate) fn open_regular_following(path: &Path, writable: bool) -> Result<File> {
    fsio::open_regular_following(path, kind_of(writable)).map_err(map_fsio)
}

fn kind_of(writable: bool) -> fsio::OpenKind {
    if writable {
        fsio::OpenKind::ReadWrite
    } else {
        fsio::OpenKind::Read
    }
}

/// [`fsio::open_regular`] with I/O errors kept as this crate's [`Error::Io`].
pub(crate) fn open_regular(path: &Path, writable: bool) -> Result<File> {
    fsio::open_regular(path, kind_of(writable)).map_err(map_fsio)
}

/// fsio's I/O errors as this crate's [`Error::Io`] (callers match on the kind).
fn map_fsio(e: fsio::Error) -> Error {
    match e {
        fsio::Error::Io { path, op, source } => Error::Io { path, op, source },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(c: Confinement) -> OpenOptions {
        OpenOptions {
            confinement: c,
            ..OpenOptions::default()
        }
    }

    #[test]
    fn names_are_confined_after_resolving_links() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let (ds, vm, other) = (root.join("ds"), root.join("ds/vm"), root.join("elsewhere"));
        for d in [&vm, &other, &ds.join("base")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let desc = vm.join("d.vmdk");
        std::fs::write(&desc, "").unwrap();
        std::fs::write(vm.join("d-flat.vmdk"), "").unwrap();
        std::fs::write(ds.join("base/b.vmdk"), "").unwrap();
        std::fs::write(other.join("secret"), "").unwrap();
        std::os::unix::fs::symlink(other.join("secret"), vm.join("sneaky.vmdk")).unwrap();
        let folder = opts(Confinement::Folder);
        let roots = opts(Confinement::Roots(Arc::from(vec![ds.clone()])));
        let ok = |n: &str, o: &OpenOptions| resolve(&desc, n, Role::Extent, o);
        assert_eq!(ok("d-flat.vmdk", &folder).unwrap(), vm.join("d-flat.vmdk"));
        let abs = vm.join("d-flat.vmdk");
        assert!(ok(abs.to_str().unwrap(), &folder).is_ok());
        for bad in ["../base/b.vmdk", "sneaky.vmdk", "/etc/passwd", "x\0y", ""] {
            let e = ok(bad, &folder).unwrap_err();
            assert!(matches!(e, Error::PathOutsideFolder { .. }), "{bad}: {e}");
        }
        // Inside the datastores: a linked clone's base is fine, the symlink out is not.
        assert_eq!(
            ok("../base/b.vmdk", &roots).unwrap(),
            ds.join("base/b.vmdk")
        );
        assert!(ok("sneaky.vmdk", &roots).is_err());
        assert!(ok("../../elsewhere/secret", &roots).is_err());
        assert!(ok("../../elsewhere/secret", &opts(Confinement::Anywhere)).is_ok());
        // A descriptor outside every root gets folder rules only.
        let outside = other.join("d.vmdk");
        std::fs::write(&outside, "").unwrap();
        assert!(resolve(&outside, "../ds/base/b.vmdk", Role::Parent, &roots).is_err());
        // An RDM's mapping file may link out; its name may not.
        assert_eq!(
            resolve(&desc, "sneaky.vmdk", Role::RdmExtent, &folder).unwrap(),
            vm.join("sneaky.vmdk")
        );
        assert!(resolve(&desc, "../../elsewhere/secret", Role::RdmExtent, &folder).is_err());
    }
}
