//! Flat extents: FLAT (with a sector offset), VMFS, and the device mappings VMFSRDM /
//! VMFSRAW. The bytes lie in the file one to one; holes in a thin file read as zeros.

use crate::error::{Error, Result};
use crate::extent::{Backing, BlockState, Extent};
use crate::fileio::PathFile;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A flat extent over a file or device.
pub struct FlatExtent {
    file: PathFile,
    offset_bytes: u64,
    len_bytes: u64,
    /// Whether SEEK_DATA/SEEK_HOLE may be used (regular files only).
    seekable_holes: bool,
    dirty: bool,
    /// Bytes written since writeback was last started.
    unkicked: u64,
}

/// Bytes written between two starts of asynchronous writeback.
const WRITEBACK_KICK_BYTES: u64 = 8 << 20;

impl FlatExtent {
    /// Open `path`, where the extent's bytes start at `offset_bytes` and span `len_bytes`.
    pub fn open(path: &Path, offset_bytes: u64, len_bytes: u64, writable: bool) -> Result<Self> {
        FlatExtent::from_file(PathFile::open(path, writable)?, offset_bytes, len_bytes)
    }

    /// The extent over the open `file` (writable when the file was opened so).
    pub fn from_file(file: PathFile, offset_bytes: u64, len_bytes: u64) -> Result<Self> {
        let path = file.path().to_path_buf();
        let meta = file
            .file()
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?;
        Ok(FlatExtent {
            file,
            offset_bytes,
            len_bytes,
            seekable_holes: meta.is_file(),
            dirty: false,
            unkicked: 0,
        })
    }

    /// Next data offset at or after `pos` (file offsets), or None if only a hole follows.
    fn seek(&self, pos: u64, whence: libc::c_int) -> Option<u64> {
        let off = libc::off_t::try_from(pos).ok()?;
        // SAFETY: lseek on a valid descriptor owned by `self.file` has no memory effects.
        let r = unsafe { libc::lseek(self.file.file().as_raw_fd(), off, whence) };
        u64::try_from(r).ok()
    }
}

impl Extent for FlatExtent {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    fn map(&mut self, offset: u64, max_len: u64) -> Result<(BlockState, u64)> {
        if !self.seekable_holes {
            return Ok((BlockState::Data, max_len));
        }
        let pos = self.offset_bytes + offset;
        let end = pos + max_len;
        match self.seek(pos, libc::SEEK_DATA) {
            // ENXIO: no data at or after pos (a hole up to EOF, or past EOF).
            None => Ok((BlockState::Zero, max_len)),
            Some(d) if d > pos => Ok((BlockState::Zero, (d.min(end)) - pos)),
            Some(_) => {
                let hole = self.seek(pos, libc::SEEK_HOLE).unwrap_or(end);
                Ok((BlockState::Data, hole.clamp(pos + 1, end) - pos))
            }
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_at_zero_fill(buf, self.offset_bytes + offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8], _backing: &mut dyn Backing) -> Result<()> {
        if !self.file.writable() {
            return Err(Error::ReadOnly {
                path: self.file.path().to_path_buf(),
                reason: "extent opened read-only",
            });
        }
        self.dirty = true;
        self.file.write_all_at(data, self.offset_bytes + offset)?;
        self.unkicked += data.len() as u64;
        if self.unkicked >= WRITEBACK_KICK_BYTES {
            self.file.start_writeback();
            self.unkicked = 0;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.file.path().to_path_buf()]
    }

    fn allocated_file_bytes(&self) -> u64 {
        if self.seekable_holes {
            self.file.allocated_bytes()
        } else {
            self.len_bytes
        }
    }
}

/// Size in bytes of a file or block device.
pub fn device_size(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::io(path, "seek", e))
}

/// Deallocate `len` bytes at `offset` in a regular file, keeping its size.
pub fn punch_hole(file: &PathFile, offset: u64, len: u64) -> Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(Error::InvalidArgument(format!(
            "hole {offset}+{len} too large"
        )));
    };
    // SAFETY: fallocate on a valid descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.file().as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r != 0 {
        return Err(Error::io(
            file.path(),
            "punch hole",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Reserve blocks for `len` bytes (zeroedthick: allocated, reading as zero).
pub fn preallocate(file: &PathFile, len: u64) -> Result<()> {
    let Ok(l) = libc::off_t::try_from(len) else {
        return Err(Error::InvalidArgument(format!("size {len} too large")));
    };
    if l == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a valid descriptor; no memory is passed.
    let r = unsafe { libc::fallocate(file.file().as_raw_fd(), 0, 0, l) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        // File systems without fallocate (tmpfs of old kernels, some NFS): a sized file still
        // reads as zeros; only the reservation is lost.
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return file.set_len(len);
        }
        return Err(Error::io(file.path(), "preallocate", err));
    }
    Ok(())
}
