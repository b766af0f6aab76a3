//! A repository in a local folder (a disk, an NFS mount, a USB drive).
//!
//! Each object is a file (mode 0600, folders 0700) written under a hidden temporary name
//! and renamed into place, so a reader never sees half an object. Metadata objects are
//! fsynced with their folder before the call returns; data objects are not, one by one
//! (an fsync per 4 MiB chunk would halve throughput): [`Backend::sync`] flushes the whole
//! file system with `syncfs(2)` before the writer stores the index and point that need
//! them, so data is always durable before the metadata that points at it.

use super::{check_name, err, io_kind, Backend, ObjectMeta, PutMode};
use crate::error::{BackendKind, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A repository folder.
#[derive(Debug, Clone)]
pub struct Local {
    root: PathBuf,
}

impl Local {
    /// The repository at `root` (not opened or checked yet).
    pub fn new(root: impl Into<PathBuf>) -> Local {
        Local { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn fail(&self, op: &'static str, name: &str, e: &std::io::Error) -> crate::Error {
        err(&self.location(), op, name, io_kind(e), e.to_string())
    }

    /// Writes `data` to a new hidden file beside `path`; returns its name.
    fn write_temp(&self, path: &Path, name: &str, data: &[u8], durable: bool) -> Result<PathBuf> {
        let tmp = fsio::temp_name(path, "vcb-tmp");
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
        };
        let mut file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().unwrap_or(&self.root);
                make_dirs(parent).map_err(|e| self.fail("create folder", name, &e))?;
                open().map_err(|e| self.fail("create", name, &e))?
            }
            Err(e) => return Err(self.fail("create", name, &e)),
        };
        let written = file.write_all(data).and_then(|()| {
            if durable {
                file.sync_all()
            } else {
                start_writeback(&file);
                Ok(())
            }
        });
        if let Err(e) = written {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail("write", name, &e));
        }
        Ok(tmp)
    }

    fn sync_parent(&self, path: &Path, name: &str) -> Result<()> {
        let parent = path.parent().unwrap_or(&self.root);
        fsio::sync_dir(parent).map_err(|e| match e.io_error() {
            Some(io) => self.fail("fsync folder", name, io),
            None => err(
                &self.location(),
                "fsync folder",
                name,
                BackendKind::Other,
                e.to_string(),
            ),
        })
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        each: &mut dyn FnMut(ObjectMeta) -> Result<()>,
    ) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.fail("list", rel, &e)),
        };
        let mut names: Vec<(String, std::fs::FileType, std::fs::Metadata)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.fail("list", rel, &e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            names.push((name, meta.file_type(), meta));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind, meta) in names {
            let full = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if kind.is_dir() {
                // Only descend where the prefix can still match.
                let as_dir = format!("{full}/");
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    self.walk(&dir.join(&name), &full, prefix, each)?;
                }
            } else if kind.is_file() && full.starts_with(prefix) {
                each(ObjectMeta {
                    name: full,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                })?;
            }
        }
        Ok(())
    }
}

/// Starts writing `file`'s data to the disk without waiting (`sync_file_range`): the
/// final `syncfs` then finds most of a backup's chunks already written, instead of all
/// of them waiting in the page cache while the CPU works on the next ones.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only schedules writeback. Failure is
    // harmless (the syncfs before the point makes everything durable either way).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn make_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Backend for Local {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        let mut f = fsio::open_regular(&path, fsio::OpenKind::Read).map_err(|e| match e {
            fsio::Error::Io { source, .. } => self.fail("get", name, &source),
            other => err(
                &self.location(),
                "get",
                name,
                BackendKind::Other,
                other.to_string(),
            ),
        })?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).map_err(|e| self.fail("get", name, &e))?;
        Ok(out)
    }

    fn put(&self, name: &str, data: &[u8], mode: PutMode) -> Result<()> {
        let path = self.path(name)?;
        if mode == PutMode::Data && path.exists() {
            return Ok(());
        }
        let tmp = self.write_temp(&path, name, data, mode != PutMode::Data)?;
        let moved = match mode {
            PutMode::Overwrite => std::fs::rename(&tmp, &path).map_err(|e| (false, e)),
            PutMode::Create | PutMode::Data => {
                fsio::rename_noreplace(&tmp, &path).map_err(|e| match e {
                    fsio::Error::Exists { .. } => (true, std::io::ErrorKind::AlreadyExists.into()),
                    other => (
                        false,
                        other
                            .io_error()
                            .map(|e| std::io::Error::new(e.kind(), e.to_string()))
                            .unwrap_or_else(|| std::io::Error::other(other.to_string())),
                    ),
                })
            }
        };
        match moved {
            Ok(()) => {}
            Err((exists, e)) => {
                let _ = std::fs::remove_file(&tmp);
                if exists && mode == PutMode::Data {
                    // Another writer stored the same content first.
                    return Ok(());
                }
                return Err(self.fail("put", name, &e));
            }
        }
        if mode != PutMode::Data {
            self.sync_parent(&path, name)?;
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.fail("delete", name, &e)),
        }
    }

    fn stat(&self, name: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                name: name.to_owned(),
                size: m.len(),
                modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
            })),
            Ok(_) => Err(err(
                &self.location(),
                "stat",
                name,
                BackendKind::Other,
                "not a regular file",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail("stat", name, &e)),
        }
    }

    fn list(&self, prefix: &str, each: &mut dyn FnMut(ObjectMeta) -> Result<()>) -> Result<()> {
        self.walk(&self.root, "", prefix, each)
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn sync(&self) -> Result<()> {
        let f = File::open(&self.root).map_err(|e| self.fail("sync", "", &e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor for the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(self.fail("sync", "", &e));
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        match std::fs::read_dir(&self.root) {
            Ok(mut d) => Ok(d.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(self.fail("list", "", &e)),
        }
    }

    fn create(&self) -> Result<()> {
        make_dirs(&self.root).map_err(|e| self.fail("create folder", "", &e))?;
        for sub in ["keys", "points", "indexes", "sessions", "locks", "verify"] {
            make_dirs(&self.root.join(sub)).map_err(|e| self.fail("create folder", sub, &e))?;
        }
        for i in 0..=255u8 {
            let sub = format!("chunks/{i:02x}");
            make_dirs(&self.root.join(&sub)).map_err(|e| self.fail("create folder", &sub, &e))?;
        }
        if let Some(parent) = self.root.parent() {
            let _ = fsio::sync_dir(parent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_list_in_order() {
        let t = tempfile::tempdir().unwrap();
        let b = Local::new(t.path().join("r"));
        assert!(b.is_empty().unwrap());
        b.create().unwrap();
        b.put("chunks/ab/ab02", b"two", PutMode::Data).unwrap();
        b.put("chunks/ab/ab01", b"one", PutMode::Data).unwrap();
        b.put("chunks/00/0001", b"zero", PutMode::Data).unwrap();
        // Data already there is kept as it is.
        b.put("chunks/ab/ab01", b"other", PutMode::Data).unwrap();
        assert_eq!(b.get("chunks/ab/ab01").unwrap(), b"one");
        let mut seen = Vec::new();
        b.list("chunks/", &mut |m| {
            seen.push(m.name);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["chunks/00/0001", "chunks/ab/ab01", "chunks/ab/ab02"]);
        b.put("sessions/s1", b"x", PutMode::Create).unwrap();
        let e = b.put("sessions/s1", b"y", PutMode::Create).unwrap_err();
        assert_eq!(e.backend_kind(), Some(BackendKind::AlreadyExists));
        b.put("sessions/s1.r1", b"x", PutMode::Overwrite).unwrap();
        let mut seen = Vec::new();
        b.list("sessions/s1.", &mut |m| {
            seen.push(m.name);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["sessions/s1.r1"]);
        assert!(b.get("nothing").unwrap_err().is_not_found());
        assert!(b.delete("sessions/s1").unwrap());
        assert!(!b.delete("sessions/s1").unwrap());
        b.sync().unwrap();
        assert!(!b.is_empty().unwrap());
    }
}
