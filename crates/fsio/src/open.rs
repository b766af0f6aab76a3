//! Opening files named by untrusted input: never through a final symbolic link, never
//! a FIFO (which would block) or a device (which would leak data) unless asked.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// How to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// Opens an existing regular file without following a symbolic link in its last
/// component (`O_NOFOLLOW`) and without blocking on a FIFO (`O_NONBLOCK`, cleared
/// again after the check), then checks on the open descriptor that it is a regular
/// file, so that what was checked is what is read.
///
/// # Errors
/// [`Error::NotRegular`] for a symbolic link, FIFO, socket, device or folder;
/// [`Error::Io`].
pub fn open_regular(path: &Path, kind: OpenKind) -> Result<File> {
    open_checked(path, kind, libc::O_NOFOLLOW)
}

/// [`open_regular`] for a path the user gave: a symbolic link is followed, but the file
/// it leads to must still be a regular file.
///
/// # Errors
/// As for [`open_regular`].
pub fn open_regular_following(path: &Path, kind: OpenKind) -> Result<File> {
    open_checked(path, kind, 0)
}

fn open_checked(path: &Path, kind: OpenKind, extra_flags: i32) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(kind == OpenKind::ReadWrite)
        .custom_flags(extra_flags | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::NotRegular {
                    path: path.to_path_buf(),
                    kind: "symbolic link",
                }
            } else {
                Error::io(path, "open", e)
            }
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if !meta.file_type().is_file() {
        return Err(Error::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(&meta.file_type()),
        });
    }
    clear_nonblock(&file, path)?;
    Ok(file)
}

/// What a file type is, in words.
pub(crate) fn kind_name(t: &std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "folder"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "regular file"
    }
}

fn clear_nonblock(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns and keeps open; F_GETFL
    // and F_SETFL only read and set the status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::io(path, "fcntl", std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(Error::io(path, "fcntl", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn regular_files_open_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "data").unwrap();
        let mut s = String::new();
        open_regular(&f, OpenKind::Read)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "data");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = open_regular(&link, OpenKind::Read).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotRegular {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{e}"
        );

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo, OpenKind::Read).unwrap_err();
        assert!(matches!(e, Error::NotRegular { kind: "FIFO", .. }), "{e}");

        let e = open_regular(Path::new("/dev/null"), OpenKind::Read).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        let e = open_regular(dir.path(), OpenKind::Read).unwrap_err();
        assert!(matches!(e, Error::NotRegular { kind: "folder", .. }), "{e}");
    }
}
