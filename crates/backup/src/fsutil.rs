//! Crash-safe file writes: `*.partial`, fsync, rename, fsync the folder.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The temporary name `path` is written under before it is renamed into place.
pub(crate) fn partial_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Write `path` atomically from `contents`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    write_atomic_with(path, |f| {
        f.write_all(contents)
            .map_err(|e| Error::io(path, "write", e))
    })
}

/// Write `path` atomically: `fill` writes the content into a temporary file which is
/// then synced and renamed over `path`. On error the temporary file is removed.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let tmp = partial_name(path);
    let mut guard = TempFile {
        path: Some(tmp.clone()),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    fill(&mut f)?;
    f.sync_all().map_err(|e| Error::io(&tmp, "sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename into place", e))?;
    guard.path = None;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsync a folder so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let f = File::open(dir).map_err(|e| Error::io(dir, "open folder", e))?;
    f.sync_all().map_err(|e| Error::io(dir, "sync folder", e))
}

/// Removes its file when dropped unless disarmed (by taking `path`).
pub(crate) struct TempFile {
    pub(crate) path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("could not remove temporary file {}: {e}", p.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        let r = write_atomic_with(&p, |_| Err(Error::Cancelled));
        assert!(matches!(r, Err(Error::Cancelled)));
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        write_atomic(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
    }
}
