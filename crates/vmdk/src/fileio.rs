//! Positional file I/O that names the file in every error.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A file opened for positional reads and writes, remembering its path for errors.
#[derive(Debug)]
pub struct PathFile {
    file: File,
    path: PathBuf,
    writable: bool,
}

impl PathFile {
    /// Open an existing file, read-only or read-write.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(path, "open", e))?;
        Ok(PathFile {
            file,
            path: path.to_path_buf(),
            writable,
        })
    }

    /// Wrap a file opened elsewhere (checked by the caller).
    pub fn from_file(file: File, path: &Path, writable: bool) -> Result<Self> {
        Ok(PathFile {
            file,
            path: path.to_path_buf(),
            writable,
        })
    }

    /// Create a new file; fails if it exists.
    pub fn create_new(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    Error::io(path, "create", e)
                }
            })?;
        Ok(PathFile {
            file,
            path: path.to_path_buf(),
            writable: true,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Current length in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?
            .len())
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes allocated on the host file system (st_blocks × 512).
    pub fn allocated_bytes(&self) -> u64 {
        self.file
            .metadata()
            .map(|m| m.blocks().saturating_mul(512))
            .unwrap_or(0)
    }

    /// Read exactly `buf.len()` bytes at `offset`; a short file is reported as truncated.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<()> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Truncated {
                path: self.path.clone(),
                what,
                offset,
                file_len: self.len().unwrap_or(0),
            }),
            Err(e) => Err(Error::io(&self.path, "read", e)),
        }
    }

    /// Read up to `buf.len()` bytes at `offset`, zero-filling whatever lies past EOF.
    pub fn read_at_zero_fill(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, "read", e)),
            }
        }
        Ok(())
    }

    /// Write all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(&self.path, "write", e))
    }

    /// Set the file length.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io(&self.path, "truncate", e))
    }

    /// fsync data and metadata.
    pub fn sync_all(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.path, "fsync", e))
    }

    /// Ask the kernel to start writing the file's dirty pages back, without waiting. A
    /// performance hint only (writeback overlaps the copy); durability still comes from
    /// `sync_data`/`sync_all`.
    pub fn start_writeback(&self) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        // SAFETY: `fd` is owned by `self.file` and open for the call; sync_file_range only
        // reads its integer arguments (offset 0, length 0 = the whole file).
        let _ = unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }

    /// fdatasync.
    pub fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, "fdatasync", e))
    }
}

/// Whether `buf` is all zero bytes (fast path on 16-byte chunks).
pub fn is_zero(buf: &[u8]) -> bool {
    let (prefix, chunks, suffix) = {
        // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets the aligned middle.
        unsafe { buf.align_to::<u128>() }
    };
    prefix.iter().all(|&b| b == 0)
        && chunks.iter().all(|&c| c == 0)
        && suffix.iter().all(|&b| b == 0)
}
