//! File helpers: atomic replacement, reads with the path in the error, confinement.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Replaces `path` with `contents` atomically (the workspace's one helper).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(fsio::write_atomic(path, contents)?)
}

/// Fsyncs a folder so that renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    Ok(fsio::sync_dir(dir)?)
}

/// The folder holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads a whole text file, refusing files larger than `max_bytes`.
pub(crate) fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    if meta.len() > max_bytes {
        return Err(Error::bad_file(
            path,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    let bytes = fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    String::from_utf8(bytes).map_err(|_| Error::bad_file(path, "not valid UTF-8"))
}

/// Reads a text file that may not exist.
pub(crate) fn read_text_opt(path: &Path, max_bytes: u64) -> Result<Option<String>> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, "read", e)),
        Ok(_) => read_text(path, max_bytes).map(Some),
    }
}

/// The canonical form of an existing path.
pub(crate) fn canonical(path: &Path, what: &'static str) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                what,
            }
        } else {
            Error::io(path, "resolve", e)
        }
    })
}

/// Removes a file, treating "not found" as done.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, "remove", e)),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_text_refuses_large_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, [0xffu8, 0xfe]).unwrap();
        assert!(matches!(read_text(&p, 100), Err(Error::BadFile { .. })));
        fs::write(&p, "hello").unwrap();
        assert!(matches!(read_text(&p, 2), Err(Error::BadFile { .. })));
        assert_eq!(read_text_opt(&dir.path().join("none"), 10).unwrap(), None);
        assert!(matches!(
            canonical(&dir.path().join("none"), "disk"),
            Err(Error::MissingFile { .. })
        ));
    }
}
