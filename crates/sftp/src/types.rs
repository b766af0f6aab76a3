//! Plain data the session hands out: attributes, folder entries, free space, extensions.

use russh_sftp::protocol::FileAttributes;

/// SFTP protocol extensions the server announced (OpenSSH announces all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// `posix-rename@openssh.com`: rename replacing the target atomically.
    pub posix_rename: bool,
    /// `fsync@openssh.com`: flush a file to stable storage.
    pub fsync: bool,
    /// `statvfs@openssh.com`: free space of a file system.
    pub statvfs: bool,
}

/// What kind of file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (only from [`Session::list_dir`](crate::Session::list_dir), which does not follow links).
    Symlink,
    /// Anything else (device, socket, fifo) or unknown.
    Other,
}

/// Attributes of a remote file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// The kind of file.
    pub kind: FileKind,
    /// Size in bytes (0 when the server does not say).
    pub size_bytes: u64,
    /// Permission bits (`mode & 0o7777`), when the server says.
    pub permissions: Option<u32>,
    /// Modification time, seconds since the Unix epoch, when the server says.
    pub mtime_secs: Option<u32>,
}

impl FileStat {
    pub(crate) fn from_attrs(attrs: &FileAttributes) -> FileStat {
        const S_IFMT: u32 = 0o170_000;
        let kind = match attrs.permissions.map(|p| p & S_IFMT) {
            Some(0o100_000) => FileKind::File,
            Some(0o040_000) => FileKind::Dir,
            Some(0o120_000) => FileKind::Symlink,
            _ => FileKind::Other,
        };
        FileStat {
            kind,
            size_bytes: attrs.size.unwrap_or(0),
            permissions: attrs.permissions.map(|p| p & 0o7777),
            mtime_secs: attrs.mtime,
        }
    }
}

/// One entry of a remote folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name inside the folder (never `.` or `..`).
    pub name: String,
    /// Its attributes, not following symbolic links.
    pub stat: FileStat,
}

/// Space on the file system holding a remote path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    /// Size of the file system in bytes.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Bytes available to the connected (unprivileged) user.
    pub available_bytes: u64,
}

/// Attributes of every file vcb creates on a server: mode 0600 (backups hold whole VMs).
pub(crate) fn private_file() -> FileAttributes {
    FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::empty()
    }
}
