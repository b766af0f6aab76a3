//! Advisory locks: one `.vcb-lock` file per VM folder and one in the host root.
//!
//! A lock is an exclusive `flock(2)` on the lock file, held for as long as the
//! [`FileLock`] lives; the kernel drops it when the process dies, so a crash never leaves
//! a stale lock behind. The lock file itself is never removed (removing it while another
//! process waits on it would let two processes hold "the" lock at once).
//!
//! Lock order: the host lock before a VM lock, never the other way round.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the lock file in a VM folder and in the host root.
pub const LOCK_FILE_NAME: &str = ".vcb-lock";

/// What to do when another process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Fail at once with [`Error::Busy`].
    #[default]
    NoWait,
    /// Wait until the lock is free.
    Wait,
}

/// An exclusive lock, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    // Held only for its open file description, which carries the flock.
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock on `path`, creating the file if needed.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it and `mode` is [`LockMode::NoWait`];
    /// [`Error::Io`] if the file cannot be opened or locked.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, "open lock file", e))?;
        let op = match mode {
            LockMode::NoWait => libc::LOCK_EX | libc::LOCK_NB,
            LockMode::Wait => libc::LOCK_EX,
        };
        loop {
            // SAFETY: flock takes a file descriptor and an operation flag; the descriptor
            // belongs to `file`, which is open for the whole call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    return Err(Error::Busy {
                        path: path.to_path_buf(),
                    })
                }
                _ => return Err(Error::io(path, "lock", err)),
            }
        }
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK_FILE_NAME);
        let first = FileLock::acquire(&p, LockMode::NoWait).unwrap();
        let err = FileLock::acquire(&p, LockMode::NoWait).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        drop(first);
        let again = FileLock::acquire(&p, LockMode::NoWait).unwrap();
        assert_eq!(again.path(), p);
    }

    #[test]
    fn wait_mode_waits_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK_FILE_NAME);
        let first = FileLock::acquire(&p, LockMode::NoWait).unwrap();
        let p2 = p.clone();
        let t = std::thread::spawn(move || FileLock::acquire(&p2, LockMode::Wait).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(first);
        t.join().unwrap().unwrap();
    }
}
