//! Backup destinations: one folder that holds one backup's files.
//!
//! [`Destination`] is the one interface backup and restore use; [`LocalDir`] implements
//! it for a local path or a `file://` URL; [`crate::remote::Sftp`] for `scp://` and
//! `sftp://` URLs.
//!
//! A backup folder is *complete* only when it holds the catalog and no
//! [`INCOMPLETE_MARKER`]: the marker is written right after the folder is created and
//! removed after the catalog, which is written last, so an interrupted backup is never
//! taken for a finished one.

use crate::error::{Error, Result};
use crate::hash::{HashingReader, Sha256Sum};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The catalog's name inside a backup folder.
pub const CATALOG_NAME: &str = "catalog";

/// The marker file present while a backup is being written.
pub const INCOMPLETE_MARKER: &str = ".vcb-incomplete";

/// A file of a destination: its name relative to the backup folder and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `/`-separated name relative to the backup folder.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// What [`Destination::put`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutInfo {
    /// Bytes written.
    pub size_bytes: u64,
    /// SHA-256 of the bytes written.
    pub sha256: Sha256Sum,
}

/// A file being written in order into a destination (see [`Destination::put_stream`]).
pub trait StreamFile {
    /// Append `data`.
    ///
    /// # Errors
    /// The destination's write error (the file is then unusable).
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Complete the file: make it durable, move it into place under its name and confirm
    /// its size. Returns its size and SHA-256.
    ///
    /// # Errors
    /// The destination's errors; [`Error::Tampered`] when the size found differs.
    fn finish(self: Box<Self>) -> Result<PutInfo>;
}

/// A place holding one backup: create it, put files, read them back, list them.
pub trait Destination {
    /// The destination as the user would write it (path or URL), for messages.
    fn location(&self) -> String;

    /// Create the backup folder and mark it incomplete. Its parent must exist; an
    /// existing folder is refused ([`Error::DestinationExists`]).
    fn create(&mut self) -> Result<()>;

    /// Write the file `name` (a safe relative name) from `data`, atomically: a crash
    /// leaves either no file or the whole file.
    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<PutInfo>;

    /// Open the file `name` for reading.
    fn get(&self, name: &str) -> Result<Box<dyn Read + Send>>;

    /// Every regular file of the backup folder (subfolders included), without the marker.
    fn list(&self) -> Result<Vec<Entry>>;

    /// Whether the backup is complete: the catalog exists and the marker does not.
    /// `Err(IncompleteBackup)` says why not.
    fn check_complete(&self) -> Result<()>;

    /// Remove the incomplete marker (after the catalog was written).
    fn mark_complete(&mut self) -> Result<()>;

    /// Remove the backup folder this object created in this run (after a failed backup),
    /// as long as it is still marked incomplete. Does nothing otherwise.
    fn discard(&mut self) -> Result<()>;

    /// A local folder that files may be written into directly (disk conversion writes
    /// its extent files there), or `None` when files must go through [`put`](Self::put).
    fn local_dir(&self) -> Option<&Path>;

    /// Move whatever was written into [`local_dir`](Self::local_dir) to its final place
    /// (remote destinations upload their staged disks). Called before the catalog is
    /// written; local folders have nothing to do.
    fn flush_local(&mut self) -> Result<()> {
        Ok(())
    }

    /// Start writing the file `name` in order, for data produced while it is sent (disks
    /// exported to a destination without [`local_dir`](Self::local_dir)). Like
    /// [`put`](Self::put), a file left unfinished never appears under its name.
    ///
    /// # Errors
    /// [`Error::UnsupportedDestination`] for destinations that take no streams (local
    /// folders: they have a `local_dir`), or the destination's errors.
    fn put_stream(&self, name: &str) -> Result<Box<dyn StreamFile + '_>> {
        Err(Error::UnsupportedDestination {
            spec: self.location(),
            reason: format!("{name}: this destination takes no streamed files"),
        })
    }

    /// Refuse early when the destination cannot hold `needed_bytes` more. `Ok(Some(note))`
    /// when it cannot tell (a warning to show); local folders check nothing.
    ///
    /// # Errors
    /// [`Error::Io`] with [`std::io::ErrorKind::StorageFull`] naming the destination.
    fn check_free_space(&self, _needed_bytes: u64) -> Result<Option<String>> {
        Ok(None)
    }

    /// Refuse early when the folder of [`local_dir`](Self::local_dir) is a staging area
    /// with less than `needed_bytes` free. Local folders check nothing.
    fn check_local_space(&self, _needed_bytes: u64) -> Result<()> {
        Ok(())
    }
}

/// Open the destination a user wrote: a local path or `file:///path` (remote URLs are
/// reached with default [`RemoteOptions`](crate::remote::RemoteOptions)).
///
/// # Errors
/// [`Error::UnsupportedDestination`] for unknown URL schemes.
pub fn open(spec: &str) -> Result<Box<dyn Destination>> {
    open_with(spec, &crate::remote::RemoteOptions::default())
}

/// Open a backup destination: a local path, `file:///path`, or `scp://`/`sftp://` (an
/// [`Sftp`](crate::remote::Sftp) destination connected with `remote`).
///
/// # Errors
/// [`Error::UnsupportedDestination`] for unknown URL schemes, [`Error::Remote`] when the
/// server cannot be reached.
pub fn open_with(
    spec: &str,
    remote: &crate::remote::RemoteOptions,
) -> Result<Box<dyn Destination>> {
    if sftp::RemoteUrl::is_remote(spec) {
        return Ok(Box::new(crate::remote::Sftp::open(spec, remote)?));
    }
    Ok(Box::new(LocalDir::parse(spec)?))
}

/// Open a backup to restore from: local paths as they are; a remote backup is first
/// downloaded whole into a local temporary folder (see
/// [`download_backup`](crate::remote::download_backup)).
///
/// # Errors
/// As [`open_with`], plus [`Error::IncompleteBackup`] for a remote backup.
pub fn open_source(
    spec: &str,
    remote: &crate::remote::RemoteOptions,
) -> Result<Box<dyn Destination>> {
    if sftp::RemoteUrl::is_remote(spec) {
        return Ok(Box::new(crate::remote::download_backup(spec, remote)?));
    }
    Ok(Box::new(LocalDir::parse(spec)?))
}

/// A backup folder on a local file system.
#[derive(Debug, Clone)]
pub struct LocalDir {
    dir: PathBuf,
    spec: String,
    /// Whether [`Destination::create`] made the folder in this run.
    created: bool,
}

impl LocalDir {
    /// A destination at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LocalDir {
        let dir = dir.into();
        LocalDir {
            spec: dir.display().to_string(),
            dir,
            created: false,
        }
    }

    /// Parse a local path or `file://` URL (`file:///home/VMs/vm37`).
    ///
    /// # Errors
    /// [`Error::UnsupportedDestination`] for other schemes or a `file://` URL naming
    /// another host.
    pub fn parse(spec: &str) -> Result<LocalDir> {
        let unsupported = |reason: &str| Error::UnsupportedDestination {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if spec.is_empty() {
            return Err(unsupported("empty destination"));
        }
        if let Some(rest) = spec.strip_prefix("file://") {
            let path = match rest.strip_prefix("localhost") {
                Some(p) if p.starts_with('/') => p,
                _ => rest,
            };
            if !path.starts_with('/') {
                return Err(unsupported(
                    "a file:// URL needs an absolute path (file:///path)",
                ));
            }
            return Ok(LocalDir {
                dir: PathBuf::from(path),
                spec: spec.to_owned(),
                created: false,
            });
        }
        if spec.starts_with("scp://") || spec.starts_with("sftp://") {
            return Err(unsupported(
                "a remote URL is not a local folder (open it with backup::dest::open_with)",
            ));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            {
                return Err(unsupported(
                    "unknown destination scheme (use a path or file:///path)",
                ));
            }
        }
        Ok(LocalDir {
            dir: PathBuf::from(spec),
            spec: spec.to_owned(),
            created: false,
        })
    }

    /// The backup folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        vmx::validate_relative_name(name)
            .map_err(|e| Error::unsafe_path("backup file name", name, e.to_string()))?;
        Ok(self.dir.join(name))
    }
}

impl Destination for LocalDir {
    fn location(&self) -> String {
        self.spec.clone()
    }

    fn create(&mut self) -> Result<()> {
        let parent = match self.dir.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => {
                return Err(Error::DestinationExists {
                    path: self.dir.clone(),
                    hint: String::new(),
                })
            }
        };
        if !parent.is_dir() {
            return Err(Error::DestinationParentMissing {
                path: self.dir.clone(),
            });
        }
        // 0700: a backup holds a whole VM, for its owner's eyes only.
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&self.dir)
        };
        if let Err(e) = made {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                let hint = if self.dir.join(INCOMPLETE_MARKER).exists() {
                    " (an incomplete backup left by an interrupted run: remove it or choose another destination)"
                } else {
                    " (backups never overwrite: choose a new folder)"
                };
                return Err(Error::DestinationExists {
                    path: self.dir.clone(),
                    hint: hint.into(),
                });
            }
            return Err(Error::io(&self.dir, "create folder", e));
        }
        self.created = true;
        let note = b"This backup is incomplete: it is being written or was interrupted. Do not restore from it.\n";
        fsio::write_private(&self.dir.join(INCOMPLETE_MARKER), note)?;
        crate::fsutil::sync_dir(parent)
    }

    fn put(&mut self, name: &str, data: &mut dyn Read) -> Result<PutInfo> {
        let path = self.path_of(name)?;
        let mut reader = HashingReader::new(data);
        crate::fsutil::write_atomic_with(&path, true, |file| {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| Error::io(&path, "read source for", e))?;
                if n == 0 {
                    return Ok(());
                }
                file.write_all(&buf[..n])
                    .map_err(|e| Error::io(&path, "write", e))?;
            }
        })?;
        let (size_bytes, sha256) = reader.finish();
        Ok(PutInfo { size_bytes, sha256 })
    }

    fn get(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.path_of(name)?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, "open", e))?;
        if !meta.is_file() {
            return Err(Error::unsafe_path(
                "backup file",
                name,
                "is not a regular file",
            ));
        }
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        list_into(&self.dir, "", &mut out, 0)?;
        out.retain(|e| e.name != INCOMPLETE_MARKER);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn check_complete(&self) -> Result<()> {
        let incomplete = |reason: &str| Error::IncompleteBackup {
            path: self.dir.clone(),
            reason: reason.into(),
        };
        if !self.dir.is_dir() {
            return Err(Error::io(
                &self.dir,
                "open backup folder",
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        if self.dir.join(INCOMPLETE_MARKER).exists() {
            return Err(incomplete(
                "it is marked incomplete: the backup was interrupted or is still running",
            ));
        }
        if !self.dir.join(CATALOG_NAME).is_file() {
            return Err(incomplete("it has no catalog"));
        }
        Ok(())
    }

    fn mark_complete(&mut self) -> Result<()> {
        let marker = self.dir.join(INCOMPLETE_MARKER);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&marker, "remove", e)),
        }
        crate::fsutil::sync_dir(&self.dir)
    }

    fn discard(&mut self) -> Result<()> {
        if !self.created || !self.dir.join(INCOMPLETE_MARKER).exists() {
            return Ok(());
        }
        std::fs::remove_dir_all(&self.dir)
            .map_err(|e| Error::io(&self.dir, "remove incomplete backup", e))?;
        self.created = false;
        Ok(())
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// Deepest folder nesting [`LocalDir::list`] follows.
const MAX_LIST_DEPTH: usize = 8;

fn list_into(dir: &Path, prefix: &str, out: &mut Vec<Entry>, depth: usize) -> Result<()> {
    if depth > MAX_LIST_DEPTH {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(|e| Error::io(entry.path(), "stat", e))?;
        let rel = format!("{prefix}{name}");
        if meta.is_dir() {
            list_into(&entry.path(), &format!("{rel}/"), out, depth + 1)?;
        } else if meta.is_file() {
            out.push(Entry {
                name: rel,
                size_bytes: meta.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_file_urls() {
        assert_eq!(
            LocalDir::parse("/b/vm37").unwrap().dir(),
            Path::new("/b/vm37")
        );
        assert_eq!(
            LocalDir::parse("file:///b/vm37").unwrap().dir(),
            Path::new("/b/vm37")
        );
        assert_eq!(
            LocalDir::parse("file://localhost/b").unwrap().dir(),
            Path::new("/b")
        );
        assert_eq!(
            LocalDir::parse("rel/dir").unwrap().dir(),
            Path::new("rel/dir")
        );
        assert!(matches!(
            LocalDir::parse("scp://u@h:/x"),
            Err(Error::UnsupportedDestination { .. })
        ));
        assert!(matches!(
            LocalDir::parse("ftp://h/x"),
            Err(Error::UnsupportedDestination { .. })
        ));
        assert!(matches!(
            LocalDir::parse("file://other/x"),
            Err(Error::UnsupportedDestination { .. })
        ));
    }

    #[test]
    fn lifecycle_create_put_complete() {
        let t = tempfile::tempdir().unwrap();
        let mut d = LocalDir::new(t.path().join("b"));
        d.create().unwrap();
        assert!(matches!(
            d.check_complete(),
            Err(Error::IncompleteBackup { .. })
        ));
        let info = d.put("a.txt", &mut &b"hello"[..]).unwrap();
        assert_eq!(info.size_bytes, 5);
        d.put(CATALOG_NAME, &mut &b"version= 1\n"[..]).unwrap();
        assert!(matches!(
            d.check_complete(),
            Err(Error::IncompleteBackup { .. })
        ));
        d.mark_complete().unwrap();
        d.check_complete().unwrap();
        let names: Vec<_> = d.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["a.txt", "catalog"]);
        let mut s = String::new();
        d.get("a.txt").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        assert!(matches!(
            d.put("../x", &mut &b""[..]),
            Err(Error::UnsafePath { .. })
        ));
    }

    #[test]
    fn refuses_existing_and_missing_parent() {
        let t = tempfile::tempdir().unwrap();
        let mut d = LocalDir::new(t.path().join("b"));
        d.create().unwrap();
        let e = LocalDir::new(t.path().join("b")).create().unwrap_err();
        assert!(matches!(e, Error::DestinationExists { .. }));
        assert!(e.to_string().contains("interrupted"));
        let e = LocalDir::new(t.path().join("no/such"))
            .create()
            .unwrap_err();
        assert!(matches!(e, Error::DestinationParentMissing { .. }));
    }
}
