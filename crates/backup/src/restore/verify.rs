//! Reading a backup's catalog and checking every file against it before anything is
//! written on the target.

use crate::dest::{Destination, CATALOG_NAME};
use crate::error::{Error, Result};
use crate::hash::{hash_reader, to_hex};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a restore reads from: a verified backup folder ([`VerifiedFiles`]) or a
/// repository point ([`crate::restore::RepoSource`]). Everything it hands out was
/// checked before the restore writes anything.
pub trait RestoreSource: Send + Sync {
    /// Where the backup is, for messages.
    fn location(&self) -> String;

    /// How many files were verified.
    fn count(&self) -> usize;

    /// A reader of the backup's configuration file `name`.
    ///
    /// # Errors
    /// [`Error::MissingFile`] for a name the backup does not hold.
    fn reader(&self, name: &str) -> Result<Box<dyn Read + Send>>;

    /// The backup's disk `name` (the catalog's `filename`).
    ///
    /// # Errors
    /// [`Error::MissingFile`], disk and repository errors.
    fn open_disk(&self, name: &str) -> Result<Box<dyn vmdk::DiskSource>>;
}

/// Largest catalog accepted (a catalog is a few kilobytes).
const MAX_CATALOG_BYTES: u64 = 4 << 20;

/// Read and parse the catalog of the backup in `src`, refusing an incomplete backup.
///
/// # Errors
/// [`Error::IncompleteBackup`], [`Error::Dict`] for a malformed catalog (with the line).
pub fn read_catalog(src: &dyn Destination) -> Result<vmx::Catalog> {
    src.check_complete()?;
    let location = format!("{}/{CATALOG_NAME}", src.location());
    let mut text = Vec::new();
    src.get(CATALOG_NAME)?
        .take(MAX_CATALOG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(&location, "read", e))?;
    if text.len() as u64 > MAX_CATALOG_BYTES {
        return Err(Error::BadCatalog {
            location,
            reason: format!("larger than {MAX_CATALOG_BYTES} bytes"),
        });
    }
    parse_catalog(&text, Path::new(&location))
}

/// Parse catalog bytes read from `path` (the backup's catalog or an alternate one).
///
/// # Errors
/// [`Error::Dict`] naming `path`.
pub fn parse_catalog(bytes: &[u8], path: &Path) -> Result<vmx::Catalog> {
    let dict = vmx::Dict::parse_bytes(bytes).map_err(|e| Error::dict(path, e))?;
    vmx::Catalog::from_dict(&dict).map_err(|e| Error::dict(path, e))
}

/// Check that every file the catalog lists is in `src` with the recorded size and
/// SHA-256, and that every backed-up disk's file is listed. Returns the number of files.
///
/// # Errors
/// As for [`verify_open`].
pub fn verify(src: &dyn Destination, catalog: &vmx::Catalog) -> Result<usize> {
    Ok(verify_open(src, catalog)?.len())
}

/// The files of a backup that passed verification, each held open: a restore reads
/// exactly the bytes that were checked (no check-then-reopen), and disk descriptors can
/// reach no other file (it is the [`vmdk::FileSource`] of the restore's disk reads).
#[derive(Debug, Clone)]
pub struct VerifiedFiles {
    inner: Arc<Held>,
}

/// The open files behind [`VerifiedFiles`] (shared with disk opens).
#[derive(Debug)]
struct Held {
    /// The backup folder (canonical).
    dir: PathBuf,
    /// Name in the catalog → the open file.
    files: BTreeMap<String, File>,
    /// The verified backups an incremental backup's disks are children of.
    parents: Vec<Held>,
}

impl Held {
    /// The verified file at `canon` (a canonical path) in this backup or its parents.
    fn find(&self, canon: &Path) -> Option<&File> {
        let own = canon
            .strip_prefix(&self.dir)
            .ok()
            .and_then(|r| r.to_str())
            .and_then(|name| self.files.get(name));
        own.or_else(|| self.parents.iter().find_map(|p| p.find(canon)))
    }
}

impl VerifiedFiles {
    /// How many files were verified.
    pub fn len(&self) -> usize {
        self.inner.files.len()
    }

    /// True when the catalog listed no file.
    pub fn is_empty(&self) -> bool {
        self.inner.files.is_empty()
    }

    /// The path the file `name` has in the backup folder (for disk opens).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.inner.dir.join(name)
    }

    /// A reader of the verified file `name` from its start.
    ///
    /// # Errors
    /// [`Error::MissingFile`] for a name that was not verified.
    pub fn reader(&self, name: &str) -> Result<PositionalReader> {
        let file = self
            .inner
            .files
            .get(name)
            .ok_or_else(|| Error::MissingFile {
                location: self.inner.dir.display().to_string(),
                name: name.to_owned(),
            })?;
        let file = file
            .try_clone()
            .map_err(|e| Error::io(self.inner.dir.join(name), "reopen", e))?;
        Ok(PositionalReader { file, pos: 0 })
    }
}

impl RestoreSource for VerifiedFiles {
    fn location(&self) -> String {
        self.inner.dir.display().to_string()
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(VerifiedFiles::reader(self, name)?))
    }

    fn open_disk(&self, name: &str) -> Result<Box<dyn vmdk::DiskSource>> {
        let source: Arc<dyn vmdk::FileSource> = self.inner.clone();
        // An incremental backup's disks name parents in backups beside it; only files
        // verified against those backups' catalogs can be opened (the source refuses
        // every other file).
        let confinement = match self.inner.dir.parent() {
            Some(up) if !self.inner.parents.is_empty() => {
                vmdk::Confinement::Roots(Arc::from(vec![up.to_path_buf()]))
            }
            _ => vmdk::Confinement::Folder,
        };
        let opts = vmdk::OpenOptions {
            source: Some(source),
            confinement,
            ..vmdk::OpenOptions::read_only()
        };
        Ok(Box::new(vmdk::Disk::open(&self.path_of(name), &opts)?))
    }
}

impl vmdk::FileSource for Held {
    fn open(&self, path: &Path, writable: bool) -> std::io::Result<File> {
        let refused = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{why} (a backup's disks may only name verified catalog files)"),
            )
        };
        if writable {
            return Err(refused("a backup file opened for writing"));
        }
        let canon = std::fs::canonicalize(path)?;
        self.find(&canon)
            .ok_or_else(|| refused("not a verified catalog file of the backup or its parents"))?
            .try_clone()
    }
}

/// Reads a shared open file from its own position (clones of one descriptor share the
/// file offset, so reads are positional).
#[derive(Debug)]
pub struct PositionalReader {
    file: File,
    pos: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// [`verify`], keeping every verified file open: each catalog file is opened once,
/// without following a symbolic link and only if it is a regular file (a FIFO or device
/// planted in a backup folder is refused, never read), then hashed from that descriptor.
///
/// # Errors
/// [`Error::MissingFile`], [`Error::Tampered`] naming the file, [`Error::BadCatalog`],
/// [`Error::UnsafePath`] for a file that is not a regular file or a reserved name;
/// [`Error::UnsupportedDestination`] for a source that is not a local folder.
pub fn verify_open(src: &dyn Destination, catalog: &vmx::Catalog) -> Result<VerifiedFiles> {
    Ok(VerifiedFiles {
        inner: Arc::new(verify_held(src, catalog)?),
    })
}

fn verify_held(src: &dyn Destination, catalog: &vmx::Catalog) -> Result<Held> {
    let location = src.location();
    let dir = src
        .local_dir()
        .ok_or_else(|| Error::UnsupportedDestination {
            spec: location.clone(),
            reason:
                "only a local folder can be verified in place (remote backups are downloaded first)"
                    .into(),
        })?;
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, "open backup folder", e))?;
    for disk in catalog.disks.iter().filter(|d| d.backed_up) {
        let Some(name) = disk.filename.as_deref() else {
            return Err(Error::BadCatalog {
                location: location.clone(),
                reason: format!("disk {} has no filename", disk.node),
            });
        };
        if catalog.file(name).is_none() {
            return Err(Error::BadCatalog {
                location: location.clone(),
                reason: format!("disk file {name:?} is not among the catalog's files"),
            });
        }
    }
    let mut files = BTreeMap::new();
    for file in &catalog.files {
        crate::restore::plan::check_reserved(&file.name)?;
        let path = dir.join(&file.name);
        let f = match fsio::open_regular(&path, fsio::OpenKind::Read) {
            Ok(f) => f,
            Err(fsio::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(Error::MissingFile {
                    location: location.clone(),
                    name: file.name.clone(),
                })
            }
            Err(fsio::Error::NotRegular { kind, .. }) => {
                return Err(Error::unsafe_path(
                    "backup file",
                    file.name.clone(),
                    format!("is a {kind}, not a regular file (refused, never read)"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let tampered = |what, expected: String, found: String| Error::Tampered {
            location: location.clone(),
            name: file.name.clone(),
            what,
            expected,
            found,
        };
        let mut r = PositionalReader {
            file: f.try_clone().map_err(|e| Error::io(&path, "reopen", e))?,
            pos: 0,
        };
        // Bounded by the recorded size: a file growing under us cannot stall the check.
        let mut limited = (&mut r).take(file.size_bytes.saturating_add(1));
        let (size, sum) = hash_reader(&mut limited, &path)?;
        if size != file.size_bytes {
            return Err(tampered(
                "size",
                file.size_bytes.to_string(),
                size.to_string(),
            ));
        }
        if sum != file.sha256 {
            return Err(tampered("sha256", file.sha256_hex(), to_hex(&sum)));
        }
        files.insert(file.name.clone(), f);
    }
    Ok(Held {
        dir,
        files,
        parents: Vec::new(),
    })
}

/// [`verify_open`], and for an incremental or differential backup every backup of its
/// chain too (each beside it, each verified against its own catalog).
///
/// # Errors
/// As for [`verify_open`]; [`Error::BadCatalog`] when a parent backup is missing, is of
/// another VM, or the chain loops or is deeper than 255 backups.
pub fn verify_open_chain(src: &dyn Destination, catalog: &vmx::Catalog) -> Result<VerifiedFiles> {
    let mut held = verify_held(src, catalog)?;
    let mut seen = vec![held.dir.clone()];
    held.parents = parents_of(&held.dir, catalog, &mut seen)?;
    Ok(VerifiedFiles {
        inner: Arc::new(held),
    })
}

/// The verified parent backups `catalog` (of the backup in `dir`) names.
fn parents_of(dir: &Path, catalog: &vmx::Catalog, seen: &mut Vec<PathBuf>) -> Result<Vec<Held>> {
    let mut names: Vec<&str> = catalog
        .disks
        .iter()
        .filter_map(|d| d.parent_backup.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let bad = |reason: String| Error::BadCatalog {
            location: dir.display().to_string(),
            reason,
        };
        let pdir = dir.parent().unwrap_or(dir).join(name);
        if !pdir.is_dir() {
            return Err(bad(format!(
                "it is an incremental backup and its parent backup {} is missing",
                pdir.display()
            )));
        }
        let local = crate::dest::LocalDir::new(pdir.clone());
        let pc = read_catalog(&local)?;
        if !pc.is_backup_of(catalog.uuid, &catalog.display_name) {
            return Err(bad(format!(
                "its parent backup {} is a backup of {}, not of {}",
                pdir.display(),
                pc.display_name,
                catalog.display_name
            )));
        }
        let mut held = verify_held(&local, &pc)?;
        if seen.contains(&held.dir) || seen.len() > 255 {
            return Err(bad(
                "its chain of parent backups loops or is too deep".into()
            ));
        }
        seen.push(held.dir.clone());
        held.parents = parents_of(&held.dir, &pc, seen)?;
        out.push(held);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::LocalDir;

    /// A complete backup folder holding `a.txt` ("hello") and a catalog listing it.
    fn backup(dir: &Path) -> LocalDir {
        let mut d = LocalDir::new(dir.join("b"));
        d.create().unwrap();
        let info = d.put("a.txt", &mut &b"hello"[..]).unwrap();
        let mut c = vmx::Catalog::new("vm", vmx::PowerState::PoweredOff);
        c.files.push(vmx::CatalogFile {
            name: "a.txt".into(),
            size_bytes: info.size_bytes,
            sha256: info.sha256,
        });
        let text = c.to_dict().unwrap().to_string();
        d.put(CATALOG_NAME, &mut text.as_bytes()).unwrap();
        d.mark_complete().unwrap();
        d
    }

    #[test]
    fn a_good_backup_verifies() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        let c = read_catalog(&d).unwrap();
        assert_eq!(verify(&d, &c).unwrap(), 1);
    }

    #[test]
    fn issue_10_fifos_symlinks_and_reserved_names_are_refused_unread() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        let c = read_catalog(&d).unwrap();
        let a = d.dir().join("a.txt");
        // A symlink to a file with the right content is still refused.
        let elsewhere = t.path().join("copy");
        std::fs::write(&elsewhere, b"hello").unwrap();
        std::fs::remove_file(&a).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &a).unwrap();
        let e = verify(&d, &c).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A FIFO would block a reader: it is refused without being opened for reading.
        std::fs::remove_file(&a).unwrap();
        let cs = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cs.as_ptr(), 0o600) }, 0);
        let e = verify(&d, &c).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let mut c2 = c.clone();
        c2.files[0].name = ".vcb-journal".into();
        assert!(matches!(verify(&d, &c2), Err(Error::UnsafePath { .. })));
    }

    #[test]
    fn a_changed_byte_is_tampering() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        std::fs::write(d.dir().join("a.txt"), b"hellO").unwrap();
        let c = read_catalog(&d).unwrap();
        let e = verify(&d, &c).unwrap_err();
        assert!(matches!(e, Error::Tampered { what: "sha256", ref name, .. } if name == "a.txt"));
        std::fs::write(d.dir().join("a.txt"), b"hello!").unwrap();
        assert!(matches!(
            verify(&d, &c),
            Err(Error::Tampered { what: "size", .. })
        ));
        std::fs::remove_file(d.dir().join("a.txt")).unwrap();
        assert!(matches!(verify(&d, &c), Err(Error::MissingFile { .. })));
    }

    #[test]
    fn unsafe_names_and_incomplete_backups_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = backup(t.path());
        let text = std::fs::read_to_string(d.dir().join(CATALOG_NAME)).unwrap();
        std::fs::write(
            d.dir().join(CATALOG_NAME),
            text.replace("\"a.txt\"", "\"../a.txt\""),
        )
        .unwrap();
        assert!(matches!(read_catalog(&d), Err(Error::Dict { .. })));
        std::fs::write(d.dir().join(crate::dest::INCOMPLETE_MARKER), "").unwrap();
        assert!(matches!(
            read_catalog(&d),
            Err(Error::IncompleteBackup { .. })
        ));
    }
}
