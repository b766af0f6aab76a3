//! Atomic replacement of one file, exclusive renames and folder syncs.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How [`write_atomic_with`] creates the new file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the new file. `None`: those of the file being replaced, or
    /// the process default (0666 less the umask) for a new one.
    pub mode: Option<u32>,
}

impl WriteOptions {
    /// Readable and writable by the owner only (0600): catalogs, keys, bundles.
    pub const PRIVATE: WriteOptions = WriteOptions { mode: Some(0o600) };
}

/// A hidden, unique name beside `path` for a file that becomes `path` later:
/// `.<name>.<tag>-<pid>-<random>`. Two processes (or two calls) never get the same one.
pub fn temp_name(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Removes, from `dir`, the temporary files [`temp_name`] made for processes that no
/// longer run (a `kill -9` between create and rename leaves them); a live process's are
/// kept. Returns how many were removed.
///
/// # Errors
/// [`Error::Io`] listing the folder or removing a file.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, "list folder", e)),
    };
    let mut removed = 0;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(entry.path(), "remove stale temporary file", e)),
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// The pid in the name of an atomic write's temporary file:
/// `.<name>.vcb-tmp-<pid>-<8 hex digits>`. Other tags (swap asides and staged files) are
/// never stale temporaries: only swap recovery may remove them.
fn temp_owner(name: &str) -> Option<i32> {
    if !name.starts_with('.') {
        return None;
    }
    let (rest, random) = name.rsplit_once('-')?;
    if random.len() != 8 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (rest, pid) = rest.rsplit_once('-')?;
    let tag = rest.rsplit_once('.')?.1;
    if tag != "vcb-tmp" {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with `pid` exists (a zombie or another user's counts as alive).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Replaces `path` with `contents` atomically (see [`write_atomic_with`]), keeping the
/// permission bits of the file it replaces.
///
/// # Errors
/// [`Error::Io`] naming the file and the step that failed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    write_with_options(path, contents, WriteOptions::default())
}

/// [`write_atomic`] for a file only its owner may read (mode 0600).
///
/// # Errors
/// As for [`write_atomic`].
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    write_with_options(path, contents, WriteOptions::PRIVATE)
}

fn write_with_options(path: &Path, contents: &[u8], opts: WriteOptions) -> Result<()> {
    write_atomic_with(path, opts, |f| {
        f.write_all(contents)
            .map_err(|e| Error::io(path, "write", e))
    })
}

/// Replaces `path` atomically with what `fill` writes: `fill` writes a new temporary
/// file beside it (created exclusively under a unique name), which is fsynced and
/// renamed over `path`, then the folder is fsynced. A crash at any point leaves either
/// the old file or the new one; on error the temporary file is removed.
///
/// # Errors
/// `fill`'s error, or [`Error::Io`] converted into `E`.
pub fn write_atomic_with<E: From<Error>>(
    path: &Path,
    opts: WriteOptions,
    fill: impl FnOnce(&mut File) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let tmp = temp_name(path, "vcb-tmp");
    let mode = match opts.mode {
        Some(m) => m,
        None => match std::fs::metadata(path) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(_) => 0o666,
        },
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    if opts.mode.is_some() {
        // The umask may have removed bits the caller asked for; never adds any.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(&tmp, "chmod", e))?;
    }
    fill(&mut file)?;
    file.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename into place", e))?;
    guard.disarm();
    sync_dir(&parent_dir(path))?;
    Ok(())
}

/// Creates `path` with `contents` atomically, never replacing a file: the content goes
/// to a unique temporary file (fsynced) that is renamed into place only if `path` is
/// still free ([`rename_noreplace`]); the folder is fsynced.
///
/// # Errors
/// [`Error::Exists`] when `path` exists (also when it appeared during the call);
/// [`Error::Io`].
pub fn create_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = temp_name(path, "vcb-tmp");
    let guard = RemoveOnDrop(Some(tmp.clone()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, "create", e))?;
    file.write_all(contents)
        .map_err(|e| Error::io(&tmp, "write", e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
    drop(file);
    rename_noreplace(&tmp, path)?;
    guard.disarm();
    sync_dir(&parent_dir(path))
}

/// Moves `from` to `to` only if `to` does not exist, atomically
/// (`renameat2(RENAME_NOREPLACE)`; on file systems without it, `link` + `unlink`).
///
/// # Errors
/// [`Error::Exists`] when `to` exists; [`Error::Io`].
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::io(p, "rename", std::io::ErrorKind::InvalidInput.into()))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: both strings are NUL-terminated and live for the call; AT_FDCWD makes the
    // paths relative to the working directory as for rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Err(Error::Exists {
            path: to.to_path_buf(),
        }),
        Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP) => {
            std::fs::hard_link(from, to).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::Exists {
                        path: to.to_path_buf(),
                    }
                } else {
                    Error::io(to, "link", e)
                }
            })?;
            std::fs::remove_file(from).map_err(|e| Error::io(from, "remove", e))
        }
        _ => Err(Error::io(to, "rename", err)),
    }
}

/// fsyncs a folder so that creations, renames and removals in it are durable.
///
/// # Errors
/// [`Error::Io`].
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let f = File::open(dir).map_err(|e| Error::io(dir, "open folder", e))?;
    f.sync_all().map_err(|e| Error::io(dir, "fsync folder", e))
}

/// The folder holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes a temporary file when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
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
    fn replaces_atomically_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn modes_are_chosen_or_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_private(&p, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        // Replacing keeps the mode the file had.
        write_atomic(&p, b"y").unwrap();
        assert_eq!(mode(&p), 0o600);
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let r: Result<()> = write_atomic_with(&p, WriteOptions::default(), |_| {
            Err(Error::io("x", "test", std::io::ErrorKind::Other.into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn temp_names_are_unique_and_hidden() {
        let a = temp_name(Path::new("/d/disk.vmdk"), "t");
        let b = temp_name(Path::new("/d/disk.vmdk"), "t");
        assert_ne!(a, b);
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".disk.vmdk.t-"));
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = temp_name(&dir.path().join("a.vmx"), "vcb-tmp");
        std::fs::write(&live, "").unwrap();
        // A pid no process has (above the kernel's pid_max).
        let dead = dir.path().join(".a.vmx.vcb-tmp-2147483000-0123abcd");
        std::fs::write(&dead, "").unwrap();
        let other = dir.path().join(".a.vmx.vcb-old-2147483000-0123abcd");
        std::fs::write(&other, "").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(live.exists() && other.exists() && !dead.exists());
    }

    #[test]
    fn create_atomic_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.vmdk");
        create_atomic(&p, b"one").unwrap();
        assert!(matches!(
            create_atomic(&p, b"two"),
            Err(Error::Exists { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        assert!(matches!(
            rename_noreplace(&a, &b),
            Err(Error::Exists { .. })
        ));
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"a");
        assert!(!a.exists());
    }
}
